package boot

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sfvmm/sfvmm/vmm/memory"
)

// Multiboot v1 (the Multiboot Specification 0.6.96).
const (
	mbHeaderMagic = 0x1badb002
	mbBootMagic   = 0x2badb002
	mbSearchLen   = 8192

	mbPageAlign  = 1 << 0  // modules page aligned: always true here
	mbMemInfo    = 1 << 1  // mem_* and mmap_* wanted: always given
	mbVideoMode  = 1 << 2  // a video mode wanted: there is no display, ignored
	mbAoutKludge = 1 << 16 // load addresses in the header
	mbKnownFlags = mbPageAlign | mbMemInfo | mbVideoMode

	// multiboot_info flags
	mbiMem      = 1 << 0
	mbiBootDev  = 1 << 1
	mbiCmdline  = 1 << 2
	mbiMods     = 1 << 3
	mbiMmap     = 1 << 6
	mbiLoader   = 1 << 9
	mbiLen      = 0x78 // through the framebuffer fields, so every field reads 0
	mbiModLen   = 16
	mbiMmapLen  = 24
	loaderName  = "sfvmm"
	mbStackTop  = 0x7c00 // where the boot sector was; a multiboot kernel sets its own stack
	mbInfoAlign = memory.PageSize
	bootDevice  = 0x8000_ffff // QEMU's boot_device: BIOS drive 0x80, no partition
)

// Offsets in struct multiboot_info.
const (
	mbiFlags      = 0
	mbiMemLower   = 4
	mbiMemUpper   = 8
	mbiBootDevice = 12
	mbiCmdlinePtr = 16
	mbiModsCount  = 20
	mbiModsAddr   = 24
	mbiMmapLength = 44
	mbiMmapAddr   = 48
	mbiLoaderName = 64
)

// mbHeader is a multiboot header found in an image.
type mbHeader struct {
	Off   int // file offset of the magic
	Flags uint32
	// a.out kludge fields, valid with mbAoutKludge
	HeaderAddr, LoadAddr, LoadEndAddr, BSSEndAddr, EntryAddr uint32
}

// findMultiboot looks for a valid header (magic, flags and checksum summing
// to zero) 4-byte aligned in the first 8 KiB.
func findMultiboot(b []byte) (mbHeader, bool) {
	for off := 0; off+12 <= min(len(b), mbSearchLen); off += 4 {
		if le.Uint32(b[off:]) != mbHeaderMagic {
			continue
		}
		flags := le.Uint32(b[off+4:])
		if mbHeaderMagic+flags+le.Uint32(b[off+8:]) != 0 {
			continue
		}
		h := mbHeader{Off: off, Flags: flags}
		if flags&mbAoutKludge != 0 && off+32 <= len(b) {
			f := b[off+12:]
			h.HeaderAddr, h.LoadAddr, h.LoadEndAddr = le.Uint32(f[0:]), le.Uint32(f[4:]), le.Uint32(f[8:])
			h.BSSEndAddr, h.EntryAddr = le.Uint32(f[12:]), le.Uint32(f[16:])
		}
		return h, true
	}
	return mbHeader{}, false
}

// loadMultiboot loads a multiboot kernel the way QEMU's -kernel does: the
// image at its physical addresses, then, page aligned after its last byte,
// the multiboot information (with memory map and command lines) and each
// module, page aligned. Only the GDT and the BIOS-area tables, which make
// way for the kernel's segments, are elsewhere.
func loadMultiboot(mem *memory.Memory, p Params) (*Entry, error) {
	h, ok := findMultiboot(p.Kernel)
	if !ok {
		return nil, errors.New("multiboot: no multiboot header")
	}
	if unknown := h.Flags & 0xffff &^ mbKnownFlags; unknown != 0 {
		return nil, fmt.Errorf("multiboot: header requires features %#x this loader does not know", unknown)
	}
	reserved := []span{{gdtAddr, 0x100, "GDT"}}
	var loaded []span
	var entry uint64
	var err error
	if h.Flags&mbAoutKludge != 0 {
		loaded, entry, err = loadAout(mem, p.Kernel, h, reserved)
	} else {
		loaded, entry, err = loadMultibootELF(mem, p.Kernel, reserved)
	}
	if err != nil {
		return nil, fmt.Errorf("multiboot: %w", err)
	}
	tables, err := writeTables(mem, p.CPUs, p.ACPI, loaded)
	if err != nil {
		return nil, fmt.Errorf("multiboot: %w", err)
	}
	info, err := writeMultibootInfo(mem, p, spansEnd(loaded))
	if err != nil {
		return nil, fmt.Errorf("multiboot: %w", err)
	}
	e, err := protected32Entry(mem, entry, mbStackTop, mbBootMagic, info)
	if err != nil {
		return nil, fmt.Errorf("multiboot: %w", err)
	}
	e.VMGenIDAddr = tables.VMGenID
	return e, nil
}

// loadAout loads the image by the header's address fields: the file from
// the offset that corresponds to load_addr up to load_end_addr (0: the end
// of the file), then zeroes up to bss_end_addr (0: no bss).
func loadAout(mem *memory.Memory, b []byte, h mbHeader, reserved []span) (loaded []span, entry uint64, err error) {
	if h.Off+32 > len(b) {
		return nil, 0, errors.New("truncated header: the a.out kludge fields are missing")
	}
	if h.HeaderAddr < h.LoadAddr || uint64(h.HeaderAddr-h.LoadAddr) > uint64(h.Off) {
		return nil, 0, fmt.Errorf("header_addr %#x and load_addr %#x put the load start before the file", h.HeaderAddr, h.LoadAddr)
	}
	off := uint64(h.Off) - uint64(h.HeaderAddr-h.LoadAddr)
	size := uint64(len(b)) - off
	if h.LoadEndAddr != 0 {
		if h.LoadEndAddr < h.LoadAddr {
			return nil, 0, fmt.Errorf("load_end_addr %#x is below load_addr %#x", h.LoadEndAddr, h.LoadAddr)
		}
		size = uint64(h.LoadEndAddr - h.LoadAddr)
		if size > uint64(len(b))-off {
			return nil, 0, fmt.Errorf("load_end_addr %#x needs %d bytes from file offset %#x; the file has %d", h.LoadEndAddr, size, off, uint64(len(b))-off)
		}
	}
	memsz := size
	if h.BSSEndAddr != 0 {
		if uint64(h.BSSEndAddr) < uint64(h.LoadAddr)+size {
			return nil, 0, fmt.Errorf("bss_end_addr %#x is below the end of the loaded image %#x", h.BSSEndAddr, uint64(h.LoadAddr)+size)
		}
		memsz = uint64(h.BSSEndAddr - h.LoadAddr)
	}
	if memsz == 0 {
		return nil, 0, errors.New("a.out kludge loads nothing")
	}
	f := &elfFile{Loads: []elfSegment{{Off: off, Paddr: uint64(h.LoadAddr), Filesz: size, Memsz: memsz}}}
	loaded, err = loadSegments(mem, f, b, nil, reserved)
	return loaded, uint64(h.EntryAddr), err
}

// loadMultibootELF loads an ELF32 image's segments at their physical
// addresses. Like QEMU, it refuses ELF64: a multiboot kernel starts in
// 32-bit mode, and one built as ELF64 must say where to load it with the
// a.out kludge.
func loadMultibootELF(mem *memory.Memory, b []byte, reserved []span) (loaded []span, entry uint64, err error) {
	if !isELF(b) {
		return nil, 0, errors.New("not an ELF file, and the header has no a.out kludge addresses")
	}
	if b[4] != elfClass32 {
		return nil, 0, errors.New("ELF64 images must use the a.out kludge: multiboot loads ELF32 only")
	}
	f, err := parseELF(b)
	if err != nil {
		return nil, 0, err
	}
	if f.Machine != emI386 {
		return nil, 0, fmt.Errorf("ELF machine %d is not i386 (%d)", f.Machine, emI386)
	}
	loaded, err = loadSegments(mem, f, b, nil, reserved)
	return loaded, f.physEntry(), err
}

// writeMultibootInfo writes, from the page after kernelEnd: the
// multiboot_info structure, the module list, the memory map and the
// strings, then each module page aligned. It returns the info's address.
func writeMultibootInfo(mem *memory.Memory, p Params, kernelEnd uint64) (uint64, error) {
	mmap := memoryMap(mem)
	size := mbiLen + mbiModLen*len(p.Modules) + mbiMmapLen*len(mmap) + len(p.Cmdline) + 1 + len(loaderName) + 1
	for _, m := range p.Modules {
		size += len(m.Cmdline) + 1
	}
	modsSize := uint64(0)
	for _, m := range p.Modules {
		modsSize += alignUp(uint64(len(m.Data)), memory.PageSize)
	}
	total := alignUp(uint64(size), memory.PageSize) + modsSize

	// Keep everything below 4 GiB in low RAM and out of the BIOS area: a
	// kernel loaded in conventional memory gets its info from 1 MiB when it
	// would not fit below the EBDA.
	low := lowEnd(mem)
	base := alignUp(kernelEnd, mbInfoAlign)
	if base < highMemStart && base+total > ebdaStart {
		base = highMemStart
	}
	if base+total > low {
		return 0, fmt.Errorf("boot information and %d modules (%d bytes) from %#x do not fit in RAM below %#x", len(p.Modules), total, base, low)
	}

	buf := make([]byte, size)
	w := mbiLen
	str := func(s string) uint32 {
		addr := uint32(base) + uint32(w)
		copy(buf[w:], s)
		w += len(s) + 1
		return addr
	}
	modsAt := w
	w += mbiModLen * len(p.Modules)
	mmapAt := w
	for _, e := range mmap {
		le.PutUint32(buf[w:], mbiMmapLen-4) // size of the rest of the entry
		le.PutUint64(buf[w+4:], e.Addr)
		le.PutUint64(buf[w+12:], e.Size)
		le.PutUint32(buf[w+20:], e.Type)
		w += mbiMmapLen
	}
	le.PutUint32(buf[mbiFlags:], mbiMem|mbiBootDev|mbiCmdline|mbiMods|mbiMmap|mbiLoader)
	le.PutUint32(buf[mbiMemLower:], ebdaStart>>10)
	le.PutUint32(buf[mbiMemUpper:], uint32((low-highMemStart)>>10))
	le.PutUint32(buf[mbiBootDevice:], bootDevice)
	le.PutUint32(buf[mbiCmdlinePtr:], str(p.Cmdline))
	le.PutUint32(buf[mbiModsCount:], uint32(len(p.Modules)))
	le.PutUint32(buf[mbiModsAddr:], uint32(base)+uint32(modsAt))
	le.PutUint32(buf[mbiMmapLength:], uint32(mbiMmapLen*len(mmap)))
	le.PutUint32(buf[mbiMmapAddr:], uint32(base)+uint32(mmapAt))
	le.PutUint32(buf[mbiLoaderName:], str(loaderName))

	at := base + alignUp(uint64(size), memory.PageSize)
	for i, m := range p.Modules {
		if _, err := mem.WriteAt(m.Data, int64(at)); err != nil {
			return 0, fmt.Errorf("write module %d: %w", i, err)
		}
		d := buf[modsAt+mbiModLen*i:]
		le.PutUint32(d[0:], uint32(at))
		le.PutUint32(d[4:], uint32(at)+uint32(len(m.Data)))
		le.PutUint32(d[8:], str(m.Cmdline))
		at += alignUp(uint64(len(m.Data)), memory.PageSize)
	}
	if _, err := mem.WriteAt(buf, int64(base)); err != nil {
		return 0, fmt.Errorf("write boot information: %w", err)
	}
	return base, nil
}

// MultibootCmdline is the command line QEMU hands a multiboot kernel: the
// kernel's file name as given, a space, then the -append string, the space
// kept when that is empty. A kernel that finds its arguments after the first
// space then finds them, empty or not, as under QEMU.
func MultibootCmdline(kernelPath, cmdline string) string {
	return kernelPath + " " + cmdline
}

// ParseModules parses QEMU's -initrd syntax for multiboot modules: a
// comma-separated list (",," stands for a literal comma) of "file args...".
// Each module's command line is the whole entry; its data is the file named
// by the entry's first word, read with read.
func ParseModules(spec string, read func(path string) ([]byte, error)) ([]Module, error) {
	if spec == "" {
		return nil, nil
	}
	var mods []Module
	var cur strings.Builder
	flush := func() error {
		line := cur.String()
		cur.Reset()
		name, _, _ := strings.Cut(line, " ")
		if name == "" {
			return fmt.Errorf("parse modules: module %d has no file name", len(mods)+1)
		}
		data, err := read(name)
		if err != nil {
			return fmt.Errorf("parse modules: module %d: %w", len(mods)+1, err)
		}
		mods = append(mods, Module{Cmdline: line, Data: data})
		return nil
	}
	for i := 0; i < len(spec); i++ {
		if spec[i] != ',' {
			cur.WriteByte(spec[i])
			continue
		}
		if i+1 < len(spec) && spec[i+1] == ',' {
			cur.WriteByte(',')
			i++
			continue
		}
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return mods, nil
}
