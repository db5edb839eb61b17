package boot

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/sfvmm/sfvmm/vmm/memory"
)

// ELF constants (System V ABI).
const (
	elfClass32  = 1
	elfClass64  = 2
	elfDataLSB  = 1
	elfTypeExec = 2
	emI386      = 3
	emX86_64    = 62
	ptLoad      = 1
	ptNote      = 4
)

func isELF(b []byte) bool {
	return len(b) >= 20 && string(b[:4]) == "\x7fELF" && b[5] == elfDataLSB
}

func isELF64(b []byte) bool {
	return isELF(b) && b[4] == elfClass64 && le.Uint16(b[18:]) == emX86_64
}

// elfSegment is one PT_LOAD program header.
type elfSegment struct {
	Off, Vaddr, Paddr, Filesz, Memsz uint64
}

type elfFile struct {
	Class   byte
	Machine uint16
	Entry   uint64
	Loads   []elfSegment
	Notes   []elfSegment // PT_NOTE headers (Off and Filesz, within the file)
}

// parseELF reads the ELF header and the PT_LOAD program headers of a
// little-endian ELF32 or ELF64 file; nothing else of the file matters to a
// loader. Every offset is checked against the file.
func parseELF(b []byte) (*elfFile, error) { return parseELFSized(b, int64(len(b))) }

// parseELFSized parses a file of size bytes of which b holds the start
// (at least the ELF and program headers); segment offsets are checked
// against size.
func parseELFSized(b []byte, size int64) (*elfFile, error) {
	if !isELF(b) {
		return nil, errors.New("not a little-endian ELF file")
	}
	f := &elfFile{Class: b[4], Machine: le.Uint16(b[18:])}
	var phoff, phentsize, phnum, minEnt uint64
	switch f.Class {
	case elfClass32:
		if len(b) < 52 {
			return nil, errors.New("truncated ELF32 header")
		}
		f.Entry = uint64(le.Uint32(b[24:]))
		phoff = uint64(le.Uint32(b[28:]))
		phentsize, phnum, minEnt = uint64(le.Uint16(b[42:])), uint64(le.Uint16(b[44:])), 32
	case elfClass64:
		if len(b) < 64 {
			return nil, errors.New("truncated ELF64 header")
		}
		f.Entry = le.Uint64(b[24:])
		phoff = le.Uint64(b[32:])
		phentsize, phnum, minEnt = uint64(le.Uint16(b[54:])), uint64(le.Uint16(b[56:])), 56
	default:
		return nil, fmt.Errorf("unknown ELF class %d", f.Class)
	}
	if phnum == 0 {
		return nil, errors.New("no program headers")
	}
	if phentsize < minEnt {
		return nil, fmt.Errorf("program header size %d is below %d", phentsize, minEnt)
	}
	if phoff > uint64(len(b)) || phnum*phentsize > uint64(len(b))-phoff {
		return nil, fmt.Errorf("program headers [%#x, +%d*%d) are beyond the %d-byte file", phoff, phnum, phentsize, len(b))
	}
	for i := uint64(0); i < phnum; i++ {
		h := b[phoff+i*phentsize:]
		typ := le.Uint32(h[0:])
		var s elfSegment
		if f.Class == elfClass32 {
			s = elfSegment{
				Off: uint64(le.Uint32(h[4:])), Vaddr: uint64(le.Uint32(h[8:])), Paddr: uint64(le.Uint32(h[12:])),
				Filesz: uint64(le.Uint32(h[16:])), Memsz: uint64(le.Uint32(h[20:])),
			}
		} else {
			s = elfSegment{
				Off: le.Uint64(h[8:]), Vaddr: le.Uint64(h[16:]), Paddr: le.Uint64(h[24:]),
				Filesz: le.Uint64(h[32:]), Memsz: le.Uint64(h[40:]),
			}
		}
		if typ == ptNote {
			if s.Off <= uint64(size) && s.Filesz <= uint64(size)-s.Off {
				f.Notes = append(f.Notes, elfSegment{Off: s.Off, Filesz: s.Filesz})
			}
			continue
		}
		if typ != ptLoad {
			continue
		}
		if s.Filesz > s.Memsz {
			return nil, fmt.Errorf("segment %d: file size %d exceeds memory size %d", i, s.Filesz, s.Memsz)
		}
		if s.Off > uint64(size) || s.Filesz > uint64(size)-s.Off {
			return nil, fmt.Errorf("segment %d: file bytes [%#x, +%d) are beyond the %d-byte file", i, s.Off, s.Filesz, size)
		}
		if s.Memsz > 0 {
			f.Loads = append(f.Loads, s)
		}
	}
	if len(f.Loads) == 0 {
		return nil, errors.New("no loadable segments")
	}
	// Overlapping segments are a broken image; refusing them also bounds
	// the copying and zeroing a hostile image can ask for by the RAM size.
	sorted := slices.Clone(f.Loads)
	slices.SortFunc(sorted, func(a, b elfSegment) int { return cmp.Compare(a.Paddr, b.Paddr) })
	for i := 1; i < len(sorted); i++ {
		a, b := sorted[i-1], sorted[i]
		if b.Paddr-a.Paddr < a.Memsz {
			return nil, fmt.Errorf("segments at %#x (size %d) and %#x overlap", a.Paddr, a.Memsz, b.Paddr)
		}
	}
	return f, nil
}

// physEntry translates the entry point to a physical address when it lies in
// a segment's virtual range (kernels linked above their load address), and
// returns it unchanged otherwise.
func (f *elfFile) physEntry() uint64 {
	for _, s := range f.Loads {
		if f.Entry >= s.Vaddr && f.Entry-s.Vaddr < s.Memsz {
			return f.Entry - s.Vaddr + s.Paddr
		}
	}
	return f.Entry
}

// loadSegments copies each PT_LOAD segment of f to its physical address and
// zeroes its bss, refusing segments outside RAM or over a reserved span;
// the bytes come from file when it is set (straight into guest RAM), else
// from b. It returns where the segments went, for the tables and the boot
// information to keep clear of.
//
// Like QEMU's load_elf, it loads every PT_LOAD segment, the ELF headers at
// 0xff000 of a kernel linked at 1 MiB without a linker script included. The
// one segment it leaves out is a segment of ELF notes beyond RAM: ld without
// a script puts .note.gnu.build-id in a segment of its own at its default
// base, 0x08048000, past the end of a 128 MiB guest, and nothing needs it to
// run (QEMU drops whatever lies beyond RAM). Any other segment beyond RAM is
// refused: the kernel would run without its code or data.
func loadSegments(mem *memory.Memory, f *elfFile, b []byte, file io.ReaderAt, reserved []span) ([]span, error) {
	var loaded []span
	for _, s := range f.Loads {
		dst, err := mem.Slice(s.Paddr, s.Memsz)
		if err != nil {
			if f.onlyNotes(s) {
				continue
			}
			return nil, fmt.Errorf("segment at %#x size %d is beyond RAM (%d MiB)", s.Paddr, s.Memsz, mem.Size()>>20)
		}
		if err := checkFree(s.Paddr, s.Memsz, reserved); err != nil {
			return nil, fmt.Errorf("segment at %#x size %d: %w", s.Paddr, s.Memsz, err)
		}
		if err := place(mem, s.Paddr, b, file, int64(s.Off), int64(s.Filesz)); err != nil {
			return nil, fmt.Errorf("segment at %#x: %w", s.Paddr, err)
		}
		clear(dst[s.Filesz:])
		loaded = append(loaded, span{s.Paddr, s.Memsz, "kernel segment"})
	}
	return loaded, nil
}

// onlyNotes reports whether segment s holds nothing but ELF notes: no bss,
// and its file bytes within those of a PT_NOTE header.
func (f *elfFile) onlyNotes(s elfSegment) bool {
	if s.Filesz != s.Memsz {
		return false
	}
	for _, n := range f.Notes {
		if s.Off >= n.Off && s.Off+s.Filesz <= n.Off+n.Filesz {
			return true
		}
	}
	return false
}

// spansEnd is where the highest of spans ends (0 for none).
func spansEnd(spans []span) uint64 {
	var e uint64
	for _, s := range spans {
		e = max(e, s.Addr+s.Size)
	}
	return e
}

// loadELF64 loads an x86-64 ELF kernel at its physical addresses and enters
// it in long mode with a stack below 1 MiB and RSI 0 (no boot information).
func loadELF64(mem *memory.Memory, p Params) (*Entry, error) {
	f, err := parseELF(p.Kernel)
	if err != nil {
		return nil, fmt.Errorf("elf64: %w", err)
	}
	reserved := []span{
		{gdtAddr, 0x100, "GDT"},
		{stackBase, stackTop + 0x10 - stackBase, "boot stack"},
		{pml4Addr, pageTablesEnd - pml4Addr, "page tables"},
	}
	loaded, err := loadSegments(mem, f, p.Kernel, nil, reserved)
	if err != nil {
		return nil, fmt.Errorf("elf64: %w", err)
	}
	entry := f.physEntry()
	if entry >= 1<<32 {
		return nil, fmt.Errorf("elf64: entry point %#x is outside the identity-mapped low 4 GiB", f.Entry)
	}
	tables, err := writeTables(mem, p.CPUs, p.ACPI, loaded)
	if err != nil {
		return nil, fmt.Errorf("elf64: %w", err)
	}
	e, err := long64Entry(mem, entry, stackTop, 0)
	if err != nil {
		return nil, fmt.Errorf("elf64: %w", err)
	}
	e.VMGenIDAddr = tables.VMGenID
	return e, nil
}
