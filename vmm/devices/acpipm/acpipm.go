// Package acpipm emulates the ACPI fixed-hardware PM1a event and control
// registers, which is all Linux needs to power the machine off (it writes
// SLP_TYP = the \_S5 value and SLP_EN to PM1a_CNT), and the GPE0 block,
// through which the VMM tells the guest of an event (the VM generation ID
// changed) by raising the SCI.
//
// The registers sit where the FADT (written elsewhere) says they are:
// PM1a_EVT_BLK at PM1aEvtBlk (status u16, enable u16), PM1a_CNT_BLK at
// PM1aCntBlk (u16) and GPE0_BLK at GPE0Blk (status u8, enable u8),
// registered as one range from PM1aEvtBlk. The machine is always in ACPI
// mode (SCI_EN reads 1; there is no SMI_CMD to switch modes).
//
// Nothing sets the PM1 status bits, so there is no power button, timer or
// wake. Sleep states other than S5 are ignored, so the guest carries on as
// if it woke at once.
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
	GPE0Blk    = 0x608 // GPE0_BLK: GPE0_STS at +0, GPE0_EN at +1
	Size       = 10    // the range registered at PM1aEvtBlk

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

// Device is the PM1a and GPE0 register block.
type Device struct {
	poweroff func()           // called without mu held
	sci      func(level bool) // the SCI line

	mu     sync.Mutex // guards the fields below
	sts    uint16     // PM1_STS; bits are cleared by writing 1
	en     uint16     // PM1_EN
	cnt    uint16     // PM1_CNT, as it reads (less SCI_EN)
	gpeSts uint8      // GPE0_STS; bits are cleared by writing 1
	gpeEn  uint8      // GPE0_EN
	// line is the SCI's level as last set, valid once lineSet: the line
	// is set only when it changes (each set is an ioctl).
	line, lineSet bool
}

// New returns the register block; poweroff is called when the guest enters
// S5, from the vCPU goroutine that wrote the register; sci drives the SCI
// line (level-triggered: high while an enabled GPE's status is set).
func New(poweroff func(), sci func(level bool)) *Device {
	if poweroff == nil {
		poweroff = func() {}
	}
	return &Device{poweroff: poweroff, sci: sci}
}

// regs returns the block as it reads, byte by byte: PM1 status, enable,
// control, two unused bytes, GPE0 status and enable.
func (d *Device) regs() [Size]byte {
	var r [Size]byte
	for i, v := range []uint16{d.sts, d.en, d.cnt | cntSCIEn} {
		r[2*i], r[2*i+1] = byte(v), byte(v>>8)
	}
	r[GPE0Blk-PM1aEvtBlk], r[GPE0Blk-PM1aEvtBlk+1] = d.gpeSts, d.gpeEn
	return r
}

// Read handles a read of any width at any offset in the block.
func (d *Device) Read(offset uint64, data []byte) {
	d.mu.Lock()
	r := d.regs()
	d.mu.Unlock()
	for i := range data {
		data[i] = 0xff
		if off := offset + uint64(i); off < Size {
			data[i] = r[off]
		}
	}
}

// Write handles a write of any width at any offset: each register takes
// the bytes of the access that fall on it, so a byte write to the high
// half of PM1_CNT can set SLP_TYP and SLP_EN as well as a word write can.
func (d *Device) Write(offset uint64, data []byte) {
	var val, mask [Size]byte // bytes written, and which
	for i, b := range data {
		if off := offset + uint64(i); off < Size {
			val[off], mask[off] = b, 0xff
		}
	}
	word := func(i int) (v, m uint16) {
		return uint16(val[2*i]) | uint16(val[2*i+1])<<8, uint16(mask[2*i]) | uint16(mask[2*i+1])<<8
	}
	g := GPE0Blk - PM1aEvtBlk
	d.mu.Lock()
	v, m := word(0)
	d.sts &^= v & m
	v, m = word(1)
	d.en = d.en&^m | v&m&enMask
	v, m = word(2)
	d.cnt = d.cnt&^m | v&m&cntMask
	off := v&m&cntSlpEn != 0 && (d.cnt&cntSlpTyp)>>cntSlpTypPos == SlpTypS5
	d.gpeSts &^= val[g] & mask[g]
	d.gpeEn = d.gpeEn&^mask[g+1] | val[g+1]&mask[g+1]
	d.updateSCI()
	d.mu.Unlock()
	if off {
		d.poweroff()
	}
}

// RaiseGPE sets GPE n's status bit: the SCI goes up if the guest enabled
// it, or when it does.
func (d *Device) RaiseGPE(n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gpeSts |= 1 << n
	d.updateSCI()
}

// updateSCI sets the SCI line from the GPE status and enable bits, if
// its level changes; mu held.
func (d *Device) updateSCI() {
	level := d.gpeSts&d.gpeEn != 0
	if d.sci != nil && (!d.lineSet || level != d.line) {
		d.sci(level)
		d.line, d.lineSet = level, true
	}
}

// State is the block's saved state.
type State struct {
	Status, Enable, Control uint16
	GPEStatus, GPEEnable    uint8
}

// Save returns the block's state.
func (d *Device) Save() (State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return State{Status: d.sts, Enable: d.en, Control: d.cnt, GPEStatus: d.gpeSts, GPEEnable: d.gpeEn}, nil
}

// Restore replaces the block's state with s.
func (d *Device) Restore(s State) error {
	if s.Status&^stsMask != 0 || s.Enable&^enMask != 0 || s.Control&^cntMask != 0 {
		return fmt.Errorf("restore acpi pm: reserved bits set in %+v", s)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sts, d.en, d.cnt, d.gpeSts, d.gpeEn = s.Status, s.Enable, s.Control, s.GPEStatus, s.GPEEnable
	d.lineSet = false // the restored machine's line is set whatever it was
	d.updateSCI()
	return nil
}
