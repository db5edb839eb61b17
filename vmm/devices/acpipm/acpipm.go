// Package acpipm emulates the ACPI fixed-hardware PM1a event and control
// registers, which is all Linux needs to power the machine off: it writes
// SLP_TYP = the \_S5 value and SLP_EN to PM1a_CNT.
//
// The registers sit where the FADT (written elsewhere) says they are:
// PM1a_EVT_BLK at PM1aEvtBlk (status u16, enable u16) and PM1a_CNT_BLK at
// PM1aCntBlk (u16), registered as one 8-port range from PM1aEvtBlk. The
// machine is always in ACPI mode (SCI_EN reads 1; there is no SMI_CMD to
// switch modes).
//
// It is not an event source: nothing sets the status bits and no SCI is
// raised, so there is no power button, timer or wake. Sleep states other
// than S5 are ignored, so the guest carries on as if it woke at once.
package acpipm

import (
	"fmt"
	"sync"
)

// Placement, for the VMM and the FADT.
const (
	PM1aEvtBlk = 0x600 // PM1a_EVT_BLK: PM1_STS at +0, PM1_EN at +2
	PM1aCntBlk = 0x604 // PM1a_CNT_BLK
	PM1EvtLen  = 4     // FADT PM1_EVT_LEN
	PM1CntLen  = 2     // FADT PM1_CNT_LEN
	Size       = 8     // the range registered at PM1aEvtBlk

	// SlpTypS5 is the SLP_TYP value for S5 (soft off); the DSDT's \_S5
	// package must declare it.
	SlpTypS5 = 5
)

// Register bits, from the ACPI specification's PM1 tables.
const (
	stsMask = 0xc731 // TMR, BM, GBL, PWRBTN, SLPBTN, RTC, PCIEXP_WAKE, WAK
	enMask  = 0x4721 // TMR, GBL, PWRBTN, SLPBTN, RTC, PCIEXP_WAKE_DIS

	cntSCIEn     = 0x0001
	cntBMRld     = 0x0002
	cntSlpTyp    = 0x1c00
	cntSlpEn     = 0x2000 // write-only
	cntSlpTypPos = 10
	cntMask      = cntBMRld | cntSlpTyp // what reads back, besides SCI_EN
)

// Device is the PM1a register block.
type Device struct {
	poweroff func() // called without mu held

	mu  sync.Mutex // guards the fields below
	sts uint16     // PM1_STS; bits are cleared by writing 1
	en  uint16     // PM1_EN
	cnt uint16     // PM1_CNT, as it reads (less SCI_EN)
}

// New returns the register block; poweroff is called when the guest enters
// S5, from the vCPU goroutine that wrote the register.
func New(poweroff func()) *Device {
	if poweroff == nil {
		poweroff = func() {}
	}
	return &Device{poweroff: poweroff}
}

// regs returns the block as it reads: status, enable, control, unused.
func (d *Device) regs() [4]uint16 {
	return [4]uint16{d.sts, d.en, d.cnt | cntSCIEn, 0}
}

// Read handles a read of any width at any offset in the block.
func (d *Device) Read(offset uint64, data []byte) {
	d.mu.Lock()
	r := d.regs()
	d.mu.Unlock()
	for i := range data {
		data[i] = 0xff
		if off := offset + uint64(i); off < Size {
			data[i] = byte(r[off/2] >> (8 * (off % 2)))
		}
	}
}

// Write handles a write of any width at any offset: each register takes
// the bytes of the access that fall on it, so a byte write to the high
// half of PM1_CNT can set SLP_TYP and SLP_EN as well as a word write can.
func (d *Device) Write(offset uint64, data []byte) {
	var val, mask [4]uint16 // per register: bytes written, and which
	for i, b := range data {
		if off := offset + uint64(i); off < Size {
			sh := 8 * (off % 2)
			val[off/2] |= uint16(b) << sh
			mask[off/2] |= 0xff << sh
		}
	}
	d.mu.Lock()
	d.sts &^= val[0] & mask[0]
	d.en = d.en&^mask[1] | val[1]&mask[1]&enMask
	d.cnt = d.cnt&^mask[2] | val[2]&mask[2]&cntMask
	off := val[2]&mask[2]&cntSlpEn != 0 && (d.cnt&cntSlpTyp)>>cntSlpTypPos == SlpTypS5
	d.mu.Unlock()
	if off {
		d.poweroff()
	}
}

// State is the block's saved state.
type State struct {
	Status, Enable, Control uint16
}

// Save returns the block's state.
func (d *Device) Save() (State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return State{Status: d.sts, Enable: d.en, Control: d.cnt}, nil
}

// Restore replaces the block's state with s.
func (d *Device) Restore(s State) error {
	if s.Status&^stsMask != 0 || s.Enable&^enMask != 0 || s.Control&^cntMask != 0 {
		return fmt.Errorf("restore acpi pm: reserved bits set in %+v", s)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sts, d.en, d.cnt = s.Status, s.Enable, s.Control
	return nil
}
