// Package mptable builds an Intel MultiProcessor Specification 1.4 table:
// the floating pointer structure and the configuration table that list the
// vCPUs, the ISA bus, the IOAPIC and how ISA IRQs reach it. Guests without
// ACPI support (and Linux booted with acpi=off) find their CPUs here.
//
// It produces bytes for one contiguous area of guest memory; where that area
// lies is the caller's choice, within the ranges the spec says guests scan.
package mptable

import (
	"encoding/binary"
	"fmt"
)

// The hardware the table describes.
const (
	// LAPICAddr and IOAPICAddr are where KVM's in-kernel irqchip decodes
	// the local APICs and the IOAPIC.
	LAPICAddr  = 0xfee0_0000
	IOAPICAddr = 0xfec0_0000
	// MaxCPUs keeps the APIC IDs 0..MaxCPUs-1 and the IOAPIC ID MaxCPUs in
	// one byte.
	MaxCPUs = 255

	apicVersion   = 0x14 // KVM's local APIC
	ioapicVersion = 0x11 // KVM's IOAPIC
	cpuSignature  = 0x600
	cpuFeatures   = 0x201 // FPU, APIC
	specRev       = 4     // MP spec 1.4
)

// Entry types and flags (MP spec 1.4, chapter 4).
const (
	entryProcessor = 0
	entryBus       = 1
	entryIOAPIC    = 2
	entryIOIntr    = 3
	entryLocalIntr = 4

	cpuEnabled = 1 << 0
	cpuBSP     = 1 << 1

	intINT    = 0
	intNMI    = 1
	intExtINT = 3

	allLAPICs = 0xff
)

const (
	fpLen     = 16
	headerLen = 44
)

var le = binary.LittleEndian

// Build returns the floating pointer (at base, which must be 16-byte
// aligned and below 4 GiB) followed by the configuration table, for cpus
// vCPUs with APIC IDs 0..cpus-1, vCPU 0 the bootstrap processor.
func Build(base uint64, cpus int) ([]byte, error) {
	switch {
	case cpus < 1 || cpus > MaxCPUs:
		return nil, fmt.Errorf("mptable: %d vCPUs is outside 1..%d", cpus, MaxCPUs)
	case base%16 != 0:
		return nil, fmt.Errorf("mptable: base %#x is not 16-byte aligned", base)
	}
	cfg := make([]byte, headerLen)
	entries := 0
	add := func(e []byte) {
		cfg = append(cfg, e...)
		entries++
	}
	for i := 0; i < cpus; i++ {
		e := make([]byte, 20)
		e[0] = entryProcessor
		e[1] = byte(i) // local APIC ID
		e[2] = apicVersion
		e[3] = cpuEnabled
		if i == 0 {
			e[3] |= cpuBSP
		}
		le.PutUint32(e[4:], cpuSignature)
		le.PutUint32(e[8:], cpuFeatures)
		add(e)
	}
	const isaBus = 0
	add([]byte{entryBus, isaBus, 'I', 'S', 'A', ' ', ' ', ' '})
	ioapicID := byte(cpus)
	io := []byte{entryIOAPIC, ioapicID, ioapicVersion, 1 /* enabled */, 0, 0, 0, 0}
	le.PutUint32(io[4:], IOAPICAddr)
	add(io)
	// ISA IRQs reach the IOAPIC pin of the same number, IRQ0 too: KVM's
	// default interrupt routing delivers its in-kernel PIT to pin 0 (a
	// PC's IRQ0→pin 2 wiring would need KVM_SET_GSI_ROUTING).
	for irq := byte(0); irq < 16; irq++ {
		add([]byte{entryIOIntr, intINT, 0, 0 /* conforming polarity and trigger */, isaBus, irq, ioapicID, irq})
	}
	// The PIC's output on LINT0 (virtual wire mode) and NMI on LINT1.
	add([]byte{entryLocalIntr, intExtINT, 0, 0, isaBus, 0, allLAPICs, 0})
	add([]byte{entryLocalIntr, intNMI, 0, 0, isaBus, 0, allLAPICs, 1})

	copy(cfg[0:4], "PCMP")
	le.PutUint16(cfg[4:], uint16(len(cfg)))
	cfg[6] = specRev
	copy(cfg[8:16], "SFVMM   ")
	copy(cfg[16:28], "SFVMM       ")
	le.PutUint16(cfg[34:], uint16(entries))
	le.PutUint32(cfg[36:], LAPICAddr)
	checksum(cfg, 7)

	cfgAddr := base + fpLen
	if cfgAddr+uint64(len(cfg)) > 1<<32 {
		return nil, fmt.Errorf("mptable: table at %#x crosses 4 GiB", base)
	}
	fp := make([]byte, fpLen)
	copy(fp[0:4], "_MP_")
	le.PutUint32(fp[4:], uint32(cfgAddr))
	fp[8] = 1 // length in 16-byte paragraphs
	fp[9] = specRev
	// Feature bytes 1-5 zero: a configuration table is present, and no
	// IMCR (the PIC and APIC are in virtual wire mode).
	checksum(fp, 10)
	return append(fp, cfg...), nil
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
