// Package acpi builds the static ACPI tables that describe an sfvmm machine
// to its guest: RSDP, XSDT, RSDT, FADT, FACS, a DSDT holding \_S5 and the
// virtio-mmio devices or the PCI host bridge, and the MADT. sfvmm runs no firmware, so these tables are the only place a
// guest learns its CPUs, its interrupt routing and how to power off.
//
// It produces bytes for one contiguous area of guest memory and knows
// nothing of how they get there; the power-management device the FADT
// points at lives in vmm/devices/acpipm.
package acpi

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The fixed hardware the tables describe.
const (
	// PM1aEvtBlk and PM1aCntBlk are the I/O ports of the PM1a event block
	// (status and enable, 2 bytes each) and control block. A guest
	// "poweroff" writes SLP_TYP=SlpTypS5 with SLP_EN to PM1aCntBlk.
	PM1aEvtBlk = 0x600
	PM1aCntBlk = 0x604
	// SCIIRQ is the ISA IRQ of the system control interrupt.
	SCIIRQ = 9
	// GPE0Blk is the general-purpose event block: GPE0Len/2 status
	// bytes, then as many enable bytes. GPE VMGenIDGPE runs \_GPE._E00,
	// which tells the VM generation ID device its ID changed.
	GPE0Blk    = 0x608
	GPE0Len    = 2
	VMGenIDGPE = 0
	// SlpTypS5 is the SLP_TYP value \_S5 announces for soft-off.
	SlpTypS5 = 5
	// ResetPort and ResetValue are the FADT reset register: the i8042
	// "pulse reset line" command.
	ResetPort  = 0x64
	ResetValue = 0xfe
	// LAPICAddr and IOAPICAddr are where KVM's in-kernel irqchip decodes
	// the local APICs and the IOAPIC.
	LAPICAddr  = 0xfee0_0000
	IOAPICAddr = 0xfec0_0000
	// MaxCPUs is the most vCPUs the MADT describes: APIC IDs 0..MaxCPUs-1
	// and the IOAPIC ID MaxCPUs must fit in 8 bits.
	MaxCPUs = 255
)

// Identification in every table header.
const (
	oemID      = "SFVMM "
	oemTableID = "SFVMM   "
	creatorID  = "SFVM"
)

// Tables are the ACPI tables laid out for the guest-physical address Base.
type Tables struct {
	Base uint64 // guest-physical address of Data[0], which is the RSDP
	Data []byte
	// Offsets of each table within Data, by signature ("RSD PTR " is at 0).
	Offsets map[string]int
	// VMGenID is the guest-physical address of the VM generation ID's
	// 16 bytes (zero here), 0 without the device.
	VMGenID uint64
}

// RSDP is the guest-physical address of the root pointer, the one address a
// guest needs (Linux reads it from boot_params.acpi_rsdp_addr or scans
// 0xe0000-0xfffff for it).
func (t *Tables) RSDP() uint64 { return t.Base }

// Devices are what the DSDT announces besides the fixed hardware.
type Devices struct {
	Virtio []VirtioMMIO
	// VMGenID adds the VM generation ID device (VMGENCTR, which Linux
	// 5.18+ reseeds its random number generator from when it changes):
	// its 16 bytes are in the tables' area, at Tables.VMGenID.
	VMGenID bool
	// PCI, if its Size is not 0, adds a PCI host bridge.
	PCI PCIHost
}

// PCIHost is a PCI host bridge (PNP0A03) with bus 0 behind it, reached
// through configuration mechanism #1, whose functions' BARs lie in the
// memory window [Base, Base+Size) below 4 GiB. Linux scans the PCI bus
// only from the host bridges the DSDT announces when it uses ACPI (its
// scan of bus 0 without one, pci_legacy_init, runs only without ACPI).
type PCIHost struct {
	Base, Size uint64
}

// VirtioMMIO is a virtio-mmio device as the DSDT announces it: Linux's
// virtio_mmio driver binds to ACPI devices LNRO0005, whose resources are
// the register window and a level-triggered, active-high interrupt (the
// Debian kernel has no virtio_mmio.device= command-line devices).
type VirtioMMIO struct {
	Base, Size uint64 // the window, below 4 GiB
	GSI        uint32
}

// Build lays out the tables for cpus vCPUs (APIC IDs 0..cpus-1) and the
// devices devs at base, which must be 64-byte aligned and below 4 GiB
// (RSDT and FADT hold 32-bit pointers).
func Build(base uint64, cpus int, devs Devices) (*Tables, error) {
	switch {
	case cpus < 1 || cpus > MaxCPUs:
		return nil, fmt.Errorf("acpi: %d vCPUs is outside 1..%d", cpus, MaxCPUs)
	case base%64 != 0:
		return nil, fmt.Errorf("acpi: base %#x is not 64-byte aligned", base)
	}
	b := &builder{base: base, offsets: map[string]int{}}
	rsdp := b.alloc("RSD PTR ", 36, 16)
	var genID uint64
	if devs.VMGenID {
		// The ID's address goes into the DSDT: it is laid out first.
		genID = b.addr(b.alloc("VGID", 16, 16))
	}
	dsdt, err := buildDSDT(devs, genID)
	if err != nil {
		return nil, fmt.Errorf("acpi: dsdt: %w", err)
	}
	xsdt := b.alloc("XSDT", 36+2*8, 16)
	rsdt := b.alloc("RSDT", 36+2*4, 16)
	facs := b.alloc("FACS", 64, 64)
	fadt := b.alloc("FACP", fadtLen, 16)
	dsdtOff := b.alloc("DSDT", len(dsdt), 16)
	madt := b.put("APIC", buildMADT(cpus), 16)
	copy(b.data[dsdtOff:], dsdt)

	writeFACS(b.data[facs:])
	writeFADT(b.data[fadt:], b.addr(facs), b.addr(dsdtOff))
	checksum(b.data[fadt:fadt+fadtLen], 9)

	x := b.data[xsdt:]
	header(x, "XSDT", 36+2*8, 1)
	le.PutUint64(x[36:], b.addr(fadt))
	le.PutUint64(x[44:], b.addr(madt))
	checksum(x[:36+2*8], 9)

	r := b.data[rsdt:]
	header(r, "RSDT", 36+2*4, 1)
	le.PutUint32(r[36:], uint32(b.addr(fadt)))
	le.PutUint32(r[40:], uint32(b.addr(madt)))
	checksum(r[:36+2*4], 9)

	p := b.data[rsdp:]
	copy(p, "RSD PTR ")
	copy(p[9:15], oemID)
	p[15] = 2 // revision: ACPI 2.0+ with XSDT
	le.PutUint32(p[16:], uint32(b.addr(rsdt)))
	le.PutUint32(p[20:], 36)
	le.PutUint64(p[24:], b.addr(xsdt))
	checksum(p[:20], 8)  // ACPI 1.0 checksum over the first 20 bytes
	checksum(p[:36], 32) // extended checksum over all of it

	if b.base+uint64(len(b.data)) > 1<<32 {
		return nil, errors.New("acpi: tables cross 4 GiB")
	}
	return &Tables{Base: base, Data: b.data, Offsets: b.offsets, VMGenID: genID}, nil
}

var le = binary.LittleEndian

// builder appends aligned, zeroed blocks to one byte slice.
type builder struct {
	base    uint64
	data    []byte
	offsets map[string]int
}

func (b *builder) alloc(sig string, n, align int) int {
	off := (len(b.data) + align - 1) &^ (align - 1)
	b.data = append(b.data, make([]byte, off+n-len(b.data))...)
	b.offsets[sig] = off
	return off
}

func (b *builder) put(sig string, t []byte, align int) int {
	off := b.alloc(sig, len(t), align)
	copy(b.data[off:], t)
	return off
}

func (b *builder) addr(off int) uint64 { return b.base + uint64(off) }

// header writes the common 36-byte system description table header; the
// checksum is filled in last, by checksum.
func header(t []byte, sig string, length int, rev byte) {
	copy(t[0:4], sig)
	le.PutUint32(t[4:], uint32(length))
	t[8] = rev
	copy(t[10:16], oemID)
	copy(t[16:24], oemTableID)
	le.PutUint32(t[24:], 1) // OEM revision
	copy(t[28:32], creatorID)
	le.PutUint32(t[32:], 1) // creator revision
}

// checksum sets t[at] so that the bytes of t sum to zero mod 256.
func checksum(t []byte, at int) {
	t[at] = 0
	var s byte
	for _, c := range t {
		s += c
	}
	t[at] = -s
}

func buildDSDT(d Devices, genID uint64) ([]byte, error) {
	// Name(_S5, Package(){5, 5, 0, 0}): SLP_TYPa, SLP_TYPb, reserved.
	pkg, err := amlIntPackage(SlpTypS5, SlpTypS5, 0, 0)
	if err != nil {
		return nil, err
	}
	aml, err := amlName("_S5", pkg)
	if err != nil {
		return nil, err
	}
	var devs []byte
	for i, v := range d.Virtio {
		d, err := virtioDevice(i, v)
		if err != nil {
			return nil, fmt.Errorf("virtio device %d: %w", i, err)
		}
		devs = append(devs, d...)
	}
	if d.PCI.Size != 0 {
		h, err := pciHostDevice(d.PCI)
		if err != nil {
			return nil, fmt.Errorf("pci host bridge: %w", err)
		}
		devs = append(devs, h...)
	}
	if genID != 0 {
		d, err := vmgenidDevice(genID)
		if err != nil {
			return nil, fmt.Errorf("vm generation id: %w", err)
		}
		devs = append(devs, d...)
	}
	if len(devs) > 0 {
		sb, err := amlRootScope("_SB", devs)
		if err != nil {
			return nil, err
		}
		aml = append(aml, sb...)
	}
	if genID != 0 {
		// Scope(\_GPE){Method(_E00){Notify(\_SB.VGEN, 0x80)}}: the
		// ID changed (0x80: the device's status or data changed).
		notify, err := amlNotify("_SB", "VGEN", 0x80)
		if err != nil {
			return nil, err
		}
		m, err := amlMethod(fmt.Sprintf("_E%02X", VMGenIDGPE), notify)
		if err != nil {
			return nil, err
		}
		gpe, err := amlRootScope("_GPE", m)
		if err != nil {
			return nil, err
		}
		aml = append(aml, gpe...)
	}
	t := make([]byte, 36+len(aml))
	header(t, "DSDT", len(t), 2) // revision 2: 64-bit AML integers
	copy(t[36:], aml)
	checksum(t, 9)
	return t, nil
}

// vmgenidDevice encodes Device(VGEN){_HID "VMGENCTR", _CID
// "VM_GEN_COUNTER", _DDN, ADDR Package(){low, high}}: the layout of
// Microsoft's VM generation ID specification, which Linux's vmgenid
// driver reads (ADDR, the ID's address as two 32-bit halves).
func vmgenidDevice(addr uint64) ([]byte, error) {
	pkg, err := amlIntPackage(addr&0xffffffff, addr>>32)
	if err != nil {
		return nil, err
	}
	return amlDevice("VGEN", amlNamed{"_HID", amlStringObj("VMGENCTR")}, amlNamed{"_CID", amlStringObj("VM_GEN_COUNTER")},
		amlNamed{"_DDN", amlStringObj("VM_Gen_Counter")}, amlNamed{"ADDR", pkg})
}

// virtioDevice encodes Device(VRnn){_HID "LNRO0005", _UID i, _CRS}: its
// window as Memory32Fixed and its interrupt as an Extended Interrupt
// descriptor (ACPI 6.5, 6.4.3.4 and 6.4.3.6).
func virtioDevice(i int, v VirtioMMIO) ([]byte, error) {
	if i > 0xff || v.Base+v.Size > 1<<32 || v.Size > 1<<32-1 {
		return nil, fmt.Errorf("window [%#x, +%#x) or index %d out of range", v.Base, v.Size, i)
	}
	crs := []byte{0x86, 9, 0, 1} // Memory32Fixed, read-write
	crs = le.AppendUint32(crs, uint32(v.Base))
	crs = le.AppendUint32(crs, uint32(v.Size))
	crs = append(crs, 0x89, 6, 0, 0x01, 1) // Extended Interrupt: consumer, level, active high, exclusive; one
	crs = le.AppendUint32(crs, v.GSI)
	crs = append(crs, 0x79, 0) // End Tag, checksum 0: none
	buf, err := amlBufferObj(crs)
	if err != nil {
		return nil, err
	}
	return amlDevice(fmt.Sprintf("VR%02X", i), amlNamed{"_HID", amlStringObj("LNRO0005")}, amlNamed{"_UID", amlInteger(uint64(i))},
		amlNamed{"_CRS", buf})
}

// pciHostDevice encodes Device(PCI0){_HID EISAID("PNP0A03"), _UID 0,
// _CRS}: bus 0 only, the configuration ports 0xCF8-0xCFF, and the memory
// window (ACPI 6.5, 6.4.3.5: Word, I/O and DWord address space
// descriptors). There is no _PRT: the functions have no INTx line.
func pciHostDevice(h PCIHost) ([]byte, error) {
	if h.Base+h.Size > 1<<32 || h.Size == 0 {
		return nil, fmt.Errorf("window [%#x, +%#x) not below 4 GiB", h.Base, h.Size)
	}
	// WordBusNumber: producer, fixed minimum and maximum; bus 0 to 0.
	crs := []byte{0x88, 13, 0, 2, 0x0c, 0}
	crs = le.AppendUint16(crs, 0) // granularity
	crs = le.AppendUint16(crs, 0) // minimum
	crs = le.AppendUint16(crs, 0) // maximum
	crs = le.AppendUint16(crs, 0) // translation
	crs = le.AppendUint16(crs, 1) // length
	// IO: 16-bit decode, 0xCF8 to 0xCF8, alignment 1, 8 ports.
	crs = append(crs, 0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8)
	// DWordMemory: producer, fixed minimum and maximum; read-write,
	// not cacheable.
	crs = append(crs, 0x87, 23, 0, 0, 0x0c, 1)
	crs = le.AppendUint32(crs, 0) // granularity
	crs = le.AppendUint32(crs, uint32(h.Base))
	crs = le.AppendUint32(crs, uint32(h.Base+h.Size-1))
	crs = le.AppendUint32(crs, 0) // translation
	crs = le.AppendUint32(crs, uint32(h.Size))
	crs = append(crs, 0x79, 0) // End Tag
	buf, err := amlBufferObj(crs)
	if err != nil {
		return nil, err
	}
	const pnp0a03 = 0x030ad041 // EISAID("PNP0A03")
	return amlDevice("PCI0", amlNamed{"_HID", amlInteger(pnp0a03)}, amlNamed{"_UID", amlInteger(0)}, amlNamed{"_CRS", buf})
}

func writeFACS(t []byte) {
	copy(t[0:4], "FACS")
	le.PutUint32(t[4:], 64)
	// hardware signature, waking vectors, global lock and flags stay 0
	t[32] = 2 // version
}

// FADT layout (ACPI 6.x, table 5.9): offsets of the fields set here.
const (
	fadtLen          = 276
	fadtFirmwareCtrl = 36
	fadtDSDT         = 40
	fadtSCIInt       = 46
	fadtSMICmd       = 48
	fadtPM1aEvtBlk   = 56
	fadtPM1aCntBlk   = 64
	fadtGPE0Blk      = 80
	fadtPM1EvtLen    = 88
	fadtPM1CntLen    = 89
	fadtGPE0BlkLen   = 92
	fadtPMTmrLen     = 91
	fadtBootArch     = 109
	fadtFlags        = 112
	fadtResetReg     = 116
	fadtResetValue   = 128
	fadtMinorVersion = 131
	fadtXFirmCtrl    = 132
	fadtXDSDT        = 140
	fadtXPM1aEvtBlk  = 148
	fadtXPM1aCntBlk  = 172

	// IAPC_BOOT_ARCH: legacy ISA devices (serial), an i8042, no VGA to probe.
	bootArchLegacyDevices = 1 << 0
	bootArch8042          = 1 << 1
	bootArchNoVGA         = 1 << 2

	fadtWBINVD      = 1 << 0
	fadtProcC1      = 1 << 2
	fadtPwrButton   = 1 << 4 // no fixed power button
	fadtSlpButton   = 1 << 5 // no fixed sleep button
	fadtResetRegSup = 1 << 10

	gasSystemIO = 1
	gasByte     = 1
)

// writeFADT fills a revision 6 FADT for a legacy (not hardware-reduced)
// platform whose PM1a blocks are the acpipm device. SMI_CMD is 0, which
// tells the guest ACPI mode is already on: there is no SMM to hand over.
// There is no PM timer and no GPE block.
func writeFADT(t []byte, facs, dsdt uint64) {
	header(t, "FACP", fadtLen, 6)
	le.PutUint32(t[fadtFirmwareCtrl:], uint32(facs))
	le.PutUint32(t[fadtDSDT:], uint32(dsdt))
	le.PutUint16(t[fadtSCIInt:], SCIIRQ)
	le.PutUint32(t[fadtSMICmd:], 0)
	le.PutUint32(t[fadtPM1aEvtBlk:], PM1aEvtBlk)
	le.PutUint32(t[fadtPM1aCntBlk:], PM1aCntBlk)
	t[fadtPM1EvtLen] = 4
	t[fadtPM1CntLen] = 2
	le.PutUint32(t[fadtGPE0Blk:], GPE0Blk)
	t[fadtGPE0BlkLen] = GPE0Len
	t[fadtPMTmrLen] = 0
	le.PutUint16(t[fadtBootArch:], bootArchLegacyDevices|bootArch8042|bootArchNoVGA)
	le.PutUint32(t[fadtFlags:], fadtWBINVD|fadtProcC1|fadtPwrButton|fadtSlpButton|fadtResetRegSup)
	gas(t[fadtResetReg:], gasSystemIO, 8, gasByte, ResetPort)
	t[fadtResetValue] = ResetValue
	t[fadtMinorVersion] = 0
	le.PutUint64(t[fadtXFirmCtrl:], facs)
	le.PutUint64(t[fadtXDSDT:], dsdt)
	// The 64-bit blocks repeat the 32-bit ones; ACPICA warns when their
	// widths disagree with PM1_EVT_LEN / PM1_CNT_LEN.
	gas(t[fadtXPM1aEvtBlk:], gasSystemIO, 32, 0, PM1aEvtBlk)
	gas(t[fadtXPM1aCntBlk:], gasSystemIO, 16, 0, PM1aCntBlk)
}

// gas writes a 12-byte Generic Address Structure.
func gas(t []byte, space, bitWidth, accessSize byte, addr uint64) {
	t[0] = space
	t[1] = bitWidth
	t[2] = 0 // bit offset
	t[3] = accessSize
	le.PutUint64(t[4:], addr)
}

// MADT entry types.
const (
	madtLocalAPIC   = 0
	madtIOAPIC      = 1
	madtOverride    = 2
	madtLocalAPICNM = 4

	madtPCATCompat = 1 // the 8259 PICs are present and must be masked
	madtEnabled    = 1
	isoActiveHigh  = 1
	isoLevel       = 3 << 2
)

// buildMADT describes the local APICs (APIC ID = processor UID = vCPU
// index), the IOAPIC (ID cpus, GSIs 0-23), the ISA overrides every PC has
// (the SCI level-triggered, active high, as the acpipm device drives it) and
// LINT1 as NMI on every CPU. ISA IRQ0 stays on GSI 0 (no override): KVM's
// default interrupt routing delivers its in-kernel PIT to IOAPIC pin 0, so a
// PC-style IRQ0→GSI2 override would leave Linux's timer silent.
func buildMADT(cpus int) []byte {
	t := make([]byte, 44, 44+8*cpus+12+2*10+6)
	le.PutUint32(t[36:], LAPICAddr)
	le.PutUint32(t[40:], madtPCATCompat)
	for i := 0; i < cpus; i++ {
		e := []byte{madtLocalAPIC, 8, byte(i), byte(i), 0, 0, 0, 0}
		le.PutUint32(e[4:], madtEnabled)
		t = append(t, e...)
	}
	io := []byte{madtIOAPIC, 12, byte(cpus), 0, 0, 0, 0, 0, 0, 0, 0, 0}
	le.PutUint32(io[4:], IOAPICAddr)
	le.PutUint32(io[8:], 0) // GSI base
	t = append(t, io...)
	t = append(t, override(SCIIRQ, SCIIRQ, isoActiveHigh|isoLevel)...)
	// Local APIC NMI: all processors (UID 0xff), default flags, LINT1.
	t = append(t, madtLocalAPICNM, 6, 0xff, 0, 0, 1)
	header(t, "APIC", len(t), 4)
	checksum(t, 9)
	return t
}

func override(irq byte, gsi uint32, flags uint16) []byte {
	e := []byte{madtOverride, 10, 0 /* ISA */, irq, 0, 0, 0, 0, 0, 0}
	le.PutUint32(e[4:], gsi)
	le.PutUint16(e[8:], flags)
	return e
}
