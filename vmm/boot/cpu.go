package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/sfvmm/sfvmm/vmm/memory"
)

// Control register and EFER bits.
const (
	cr0PE   = 1 << 0
	cr0ET   = 1 << 4
	cr0NE   = 1 << 5
	cr0PG   = 1 << 31
	cr4PAE  = 1 << 5
	eferLME = 1 << 8
	eferLMA = 1 << 10
)

// Segment types (the low 4 bits of the access byte), accessed bit set so
// the descriptor in memory matches what the VMM loads.
const (
	typeCodeRX = 0xb // execute/read, accessed
	typeDataRW = 0x3 // read/write, accessed
)

var le = binary.LittleEndian

// flat returns a flat 4 GiB segment.
func flat(sel uint16, typ uint8, long bool) Segment {
	s := Segment{Limit: 0xffff_ffff, Selector: sel, Type: typ, Present: 1, S: 1, G: 1, DB: 1}
	if long {
		s.L, s.DB = 1, 0
	}
	return s
}

// descriptor encodes s as an 8-byte GDT entry.
func descriptor(s Segment) uint64 {
	limit := uint64(s.Limit)
	if s.G == 1 {
		limit >>= 12
	}
	access := uint64(s.Type) | uint64(s.S)<<4 | uint64(s.DPL)<<5 | uint64(s.Present)<<7
	flags := uint64(s.L)<<1 | uint64(s.DB)<<2 | uint64(s.G)<<3
	return limit&0xffff | (s.Base&0xff_ffff)<<16 | access<<40 |
		(limit>>16&0xf)<<48 | flags<<52 | (s.Base>>24&0xff)<<56
}

// writeGDT writes a GDT holding cs and ds at their selectors (other slots
// null) at gdtAddr and records it in e.
func writeGDT(mem *memory.Memory, e *Entry) error {
	n := max(e.CS.Selector, e.DS.Selector)/8 + 1
	gdt := make([]byte, 8*n)
	le.PutUint64(gdt[e.CS.Selector:], descriptor(e.CS))
	le.PutUint64(gdt[e.DS.Selector:], descriptor(e.DS))
	if _, err := mem.WriteAt(gdt, gdtAddr); err != nil {
		return fmt.Errorf("write gdt: %w", err)
	}
	e.GDTBase, e.GDTLimit = gdtAddr, uint16(len(gdt)-1)
	return nil
}

// Page table entry bits.
const (
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	ptePS      = 1 << 7 // 2 MiB page in a PD entry
)

// writePageTables identity-maps the low 4 GiB with 2 MiB pages (1 GiB pages
// would need the pdpe1gb CPUID feature) and returns the PML4 address for CR3.
func writePageTables(mem *memory.Memory) (uint64, error) {
	pt := make([]byte, pageTablesEnd-pml4Addr)
	le.PutUint64(pt[0:], pdptAddr|ptePresent|pteWrite)
	for g := uint64(0); g < 4; g++ {
		pd := pdAddr + g*memory.PageSize
		le.PutUint64(pt[pdptAddr-pml4Addr+8*g:], pd|ptePresent|pteWrite)
		for i := uint64(0); i < 512; i++ {
			addr := g<<30 | i<<21
			le.PutUint64(pt[pd-pml4Addr+8*i:], addr|ptePresent|pteWrite|ptePS)
		}
	}
	if _, err := mem.WriteAt(pt, pml4Addr); err != nil {
		return 0, fmt.Errorf("write page tables: %w", err)
	}
	return pml4Addr, nil
}

// long64Entry returns a 64-bit entry at rip on fresh page tables and GDT,
// with the selectors of Linux's 64-bit boot protocol (__BOOT_CS 0x10,
// __BOOT_DS 0x18).
func long64Entry(mem *memory.Memory, rip, rsp, rsi uint64) (*Entry, error) {
	e := &Entry{
		Mode: Long64,
		RIP:  rip, RSP: rsp, RSI: rsi,
		CS:   flat(0x10, typeCodeRX, true),
		DS:   flat(0x18, typeDataRW, false),
		CR0:  cr0PE | cr0ET | cr0NE | cr0PG,
		CR4:  cr4PAE,
		EFER: eferLME | eferLMA,
	}
	if err := writeGDT(mem, e); err != nil {
		return nil, err
	}
	cr3, err := writePageTables(mem)
	if err != nil {
		return nil, err
	}
	e.CR3 = cr3
	return e, nil
}

// protected32Entry returns a flat 32-bit entry at rip, paging off, with the
// multiboot registers: EAX the magic, EBX the info address.
func protected32Entry(mem *memory.Memory, rip, rsp, rax, rbx uint64) (*Entry, error) {
	e := &Entry{
		Mode: Protected32,
		RIP:  rip, RSP: rsp, RAX: rax, RBX: rbx,
		CS:  flat(0x08, typeCodeRX, false),
		DS:  flat(0x10, typeDataRW, false),
		CR0: cr0PE | cr0ET,
	}
	if err := writeGDT(mem, e); err != nil {
		return nil, err
	}
	return e, nil
}
