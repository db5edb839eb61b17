package boot

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sfvmm/sfvmm/vmm/boot/mptable"
	"github.com/sfvmm/sfvmm/vmm/memory"
)

// Fixed guest-physical addresses of the boot structures (see the package
// comment for the whole map).
const (
	gdtAddr       = 0x500
	zeroPageAddr  = 0x7000
	stackTop      = 0x8ff0
	stackBase     = 0x8000
	pml4Addr      = 0x9000
	pdptAddr      = 0xa000
	pdAddr        = 0xb000 // 4 page directories, one per GiB
	pageTablesEnd = 0xf000
	cmdlineAddr   = 0x2_0000
	cmdlineMax    = 0x1_0000 // bytes, including the NUL

	ebdaStart    = 0x9_fc00 // end of usable conventional memory (639 KiB)
	biosAreaEnd  = 0x10_0000
	highMemStart = 0x10_0000 // 1 MiB

	// Guests without firmware to ask scan 0xe0000-0xfffff for the ACPI
	// RSDP and 0xf0000-0xfffff for the MP floating pointer; each set of
	// tables goes in its window, at the lowest free address.
	acpiWindow    = 0xe_0000
	acpiAlign     = 64 // acpi.Build's alignment
	mptableWindow = 0xf_0000
	mptableAlign  = 16 // the MP spec's, for the floating pointer

	maxCPUs = mptable.MaxCPUs
)

// e820 entry types, shared by the multiboot memory map.
const (
	e820RAM      = 1
	e820Reserved = 2
)

type e820Entry struct {
	Addr, Size uint64
	Type       uint32
}

// memoryMap is what the guest is told about RAM: conventional memory up to
// the EBDA, the BIOS area (holding the MP and ACPI tables) reserved, then
// each RAM region from 1 MiB. The boot structures below 1 MiB stay in usable
// RAM, as on a PC: Linux copies the zero page and command line before it
// allocates, and reserves the first megabyte itself.
func memoryMap(mem *memory.Memory) []e820Entry {
	m := []e820Entry{
		{0, ebdaStart, e820RAM},
		{ebdaStart, biosAreaEnd - ebdaStart, e820Reserved},
	}
	for _, r := range mem.Regions() {
		start, end := r.GPA, r.GPA+r.Size
		start = max(start, highMemStart)
		if end > start {
			m = append(m, e820Entry{start, end - start, e820RAM})
		}
	}
	return m
}

// lowEnd is the end of the RAM region at 0, which is where RAM below 4 GiB
// ends (memory.HoleStart at most).
func lowEnd(mem *memory.Memory) uint64 {
	r := mem.Regions()
	if len(r) == 0 || r[0].GPA != 0 {
		return 0
	}
	return r[0].Size
}

// span is a guest-physical range [Addr, Addr+Size) with a name for errors.
type span struct {
	Addr, Size uint64
	Name       string
}

// overlaps reports whether [addr, addr+size) intersects s. addr+size must
// not overflow (callers check ranges against RAM first).
func (s span) overlaps(addr, size uint64) bool {
	return size > 0 && addr < s.Addr+s.Size && s.Addr < addr+size
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

func (s span) String() string { return fmt.Sprintf("%s at [%#x, %#x)", s.Name, s.Addr, s.Addr+s.Size) }

// checkFree refuses [addr, addr+size) when it overlaps a reserved span.
func checkFree(addr, size uint64, reserved []span) error {
	for _, s := range reserved {
		if s.overlaps(addr, size) {
			return fmt.Errorf("[%#x, %#x) overlaps the %v", addr, addr+size, s)
		}
	}
	return nil
}

// findFree returns the lowest align-aligned address a with [a, a+size)
// inside [start, end) and clear of every span in used. When there is none,
// the error names the spans that take the window.
func findFree(start, end, size, align uint64, used []span) (uint64, error) {
	for a := alignUp(start, align); a+size <= end; {
		i := slices.IndexFunc(used, func(s span) bool { return s.overlaps(a, size) })
		if i < 0 {
			return a, nil
		}
		a = alignUp(used[i].Addr+used[i].Size, align) // past the span: a only grows
	}
	var in []string
	for _, s := range used {
		if s.overlaps(start, end-start) {
			in = append(in, s.String())
		}
	}
	if len(in) == 0 {
		return 0, fmt.Errorf("%d bytes do not fit in [%#x, %#x)", size, start, end)
	}
	return 0, fmt.Errorf("no room for %d bytes in [%#x, %#x) beside the %s", size, start, end, strings.Join(in, " and the "))
}
