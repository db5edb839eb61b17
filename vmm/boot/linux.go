package boot

import (
	"errors"
	"fmt"
	"io"

	"github.com/sfvmm/sfvmm/vmm/memory"
)

// Linux x86 boot protocol (Documentation/arch/x86/boot.rst): offsets in the
// image's setup header, which the zero page (struct boot_params) repeats at
// the same offsets.
const (
	hdrSetupSects    = 0x1f1
	hdrSysSize       = 0x1f4
	hdrJump          = 0x200 // 2-byte jump; its second byte sizes the header
	hdrMagic         = 0x202 // "HdrS"
	hdrVersion       = 0x206
	hdrTypeOfLoader  = 0x210
	hdrLoadFlags     = 0x211
	hdrRamdiskImage  = 0x218
	hdrRamdiskSize   = 0x21c
	hdrHeapEndPtr    = 0x224
	hdrCmdLinePtr    = 0x228
	hdrInitrdAddrMax = 0x22c
	hdrKernelAlign   = 0x230
	hdrRelocatable   = 0x234
	hdrXLoadFlags    = 0x236
	hdrCmdlineSize   = 0x238
	hdrPrefAddress   = 0x258
	hdrInitSize      = 0x260
	hdrMinLen        = 0x264 // the image must hold the header up to init_size

	bpACPIRSDPAddr = 0x070 // boot_params.acpi_rsdp_addr (protocol 2.14)
	bpE820Entries  = 0x1e8
	bpE820Table    = 0x2d0
	bpHdrEnd       = 0x290 // the setup header can never extend past this
	e820Max        = 128

	minVersion    = 0x020c // 2.12: the first with xloadflags
	loadedHigh    = 1 << 0
	canUseHeap    = 1 << 7
	xlfKernel64   = 1 << 0
	loaderUnknown = 0xff
	heapEnd       = 0xfe00 // heap_end_ptr: end of the setup heap, relative to the setup code
	entry64Offset = 0x200  // startup_64 is 512 bytes into the protected-mode kernel
	kernelAddr    = highMemStart
)

func isBzImage(b []byte) bool {
	return len(b) >= hdrMagic+4 && string(b[hdrMagic:hdrMagic+4]) == "HdrS"
}

// loadBzImage follows the 64-bit boot protocol: the protected-mode kernel
// at 1 MiB, a zero page with the setup header, command line, initrd and e820
// map, and entry at startup_64 in long mode with RSI pointing at the zero
// page.
func loadBzImage(mem *memory.Memory, p Params) (*Entry, error) {
	img := p.Kernel
	if len(img) < hdrMinLen {
		return nil, fmt.Errorf("bzimage: truncated: %d bytes, the setup header alone needs %d", len(img), hdrMinLen)
	}
	version := le.Uint16(img[hdrVersion:])
	if version < minVersion {
		return nil, fmt.Errorf("bzimage: boot protocol %d.%02d is older than 2.12, which 64-bit entry needs", version>>8, version&0xff)
	}
	if img[hdrXLoadFlags]&xlfKernel64 == 0 {
		return nil, errors.New("bzimage: not 64-bit capable (xloadflags lacks XLF_KERNEL_64)")
	}
	if img[hdrLoadFlags]&loadedHigh == 0 {
		return nil, errors.New("bzimage: a zImage (not loaded high) cannot be booted")
	}
	setupSects := int(img[hdrSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	setupLen := (setupSects + 1) * 512
	if len(img) < setupLen {
		return nil, fmt.Errorf("bzimage: truncated: %d bytes, shorter than its %d setup sectors", len(img), setupSects)
	}
	size := int64(len(img))
	if p.KernelFile != nil {
		size = p.KernelSize
	}
	kernelLen := uint64(size) - uint64(setupLen)
	if sys := uint64(le.Uint32(img[hdrSysSize:])) * 16; kernelLen < sys {
		return nil, fmt.Errorf("bzimage: truncated: the header says the kernel is %d bytes, the file holds %d", sys, kernelLen)
	}
	hdrEnd := min(hdrMagic+int(img[hdrJump+1]), bpHdrEnd)
	if hdrEnd < hdrMinLen {
		return nil, fmt.Errorf("bzimage: setup header ends at %#x, before init_size", hdrEnd)
	}

	// The kernel decompresses itself to max(load address aligned up to
	// kernel_alignment, pref_address) and needs init_size bytes from there
	// (head_64.S); with KASLR it picks somewhere higher still.
	low := lowEnd(mem)
	kernelEnd := kernelAddr + kernelLen
	runStart := le.Uint64(img[hdrPrefAddress:])
	if img[hdrRelocatable] != 0 {
		if align := uint64(le.Uint32(img[hdrKernelAlign:])); align != 0 && align&(align-1) == 0 {
			runStart = max(alignUp(kernelAddr, align), runStart)
		}
	}
	runEnd := runStart + uint64(le.Uint32(img[hdrInitSize:]))
	if runStart >= 1<<32 || runEnd > low || kernelEnd > low {
		return nil, fmt.Errorf("bzimage: kernel needs RAM up to %#x (%d bytes loaded at %#x, init_size to %#x); RAM below 4 GiB ends at %#x",
			max(kernelEnd, runEnd), kernelLen, kernelAddr, runEnd, low)
	}
	if err := place(mem, kernelAddr, img, p.KernelFile, int64(setupLen), int64(kernelLen)); err != nil {
		return nil, fmt.Errorf("bzimage: write kernel: %w", err)
	}
	tables, err := writeTables(mem, p.CPUs, p.ACPI, nil) // the kernel is above 1 MiB
	if err != nil {
		return nil, fmt.Errorf("bzimage: %w", err)
	}
	rsdp := tables.RSDP()

	zp := make([]byte, memory.PageSize)
	copy(zp[hdrSetupSects:hdrEnd], img[hdrSetupSects:hdrEnd])
	zp[hdrTypeOfLoader] = loaderUnknown
	zp[hdrLoadFlags] |= canUseHeap
	le.PutUint16(zp[hdrHeapEndPtr:], heapEnd)
	le.PutUint64(zp[bpACPIRSDPAddr:], rsdp)

	e, err := finishZeroPage(mem, p, zp, max(kernelEnd, runEnd), low, kernelAddr+entry64Offset)
	if err != nil {
		return nil, fmt.Errorf("bzimage: %w", err)
	}
	e.VMGenIDAddr = tables.VMGenID
	return e, nil
}

// finishZeroPage completes a zero page whose setup header is in place: the
// command line, the initrd above usedEnd, the e820 map; it writes the page
// and returns the 64-bit entry at entry with RSI pointing at it.
func finishZeroPage(mem *memory.Memory, p Params, zp []byte, usedEnd, low, entry uint64) (*Entry, error) {
	cmdlineSize := uint64(le.Uint32(zp[hdrCmdlineSize:]))
	if n := uint64(len(p.Cmdline)); n > cmdlineSize || n+1 > cmdlineMax {
		return nil, fmt.Errorf("command line of %d bytes exceeds the kernel's cmdline_size %d", n, min(cmdlineSize, cmdlineMax-1))
	}
	if _, err := mem.WriteAt(append([]byte(p.Cmdline), 0), cmdlineAddr); err != nil {
		return nil, fmt.Errorf("write command line: %w", err)
	}
	le.PutUint32(zp[hdrCmdLinePtr:], cmdlineAddr)

	initrdLen := int64(len(p.Initrd))
	if p.InitrdFile != nil {
		initrdLen = p.InitrdSize
	}
	if initrdLen > 0 {
		addr, err := placeInitrd(uint64(initrdLen), uint64(le.Uint32(zp[hdrInitrdAddrMax:])), usedEnd, low)
		if err != nil {
			return nil, err
		}
		if err := place(mem, addr, p.Initrd, p.InitrdFile, 0, initrdLen); err != nil {
			return nil, fmt.Errorf("write initrd: %w", err)
		}
		le.PutUint32(zp[hdrRamdiskImage:], uint32(addr))
		le.PutUint32(zp[hdrRamdiskSize:], uint32(initrdLen))
	}

	m := memoryMap(mem)
	if len(m) > e820Max {
		return nil, fmt.Errorf("%d e820 entries exceed %d", len(m), e820Max)
	}
	zp[bpE820Entries] = byte(len(m))
	for i, e := range m {
		t := zp[bpE820Table+20*i:]
		le.PutUint64(t[0:], e.Addr)
		le.PutUint64(t[8:], e.Size)
		le.PutUint32(t[16:], e.Type)
	}
	if _, err := mem.WriteAt(zp, zeroPageAddr); err != nil {
		return nil, fmt.Errorf("write zero page: %w", err)
	}
	return long64Entry(mem, entry, stackTop, zeroPageAddr)
}

// Setup header values for a kernel that brings none (vmlinux): those a
// bzImage of the same kernel would carry, as Firecracker fills them in.
const (
	vmlinuxVersion     = 0x020f
	vmlinuxCmdlineSize = cmdlineMax - 1
	vmlinuxInitrdMax   = 0x7fff_ffff
	vmlinuxKernelAlign = 0x0100_0000
	bootFlagOffset     = 0x1fe
	bootFlag           = 0xaa55
	vmlinuxNoteName    = "Linux"
)

// isVmlinux reports whether an ELF64 image is a Linux kernel (vmlinux): it
// carries ELF notes named "Linux". b holds the image's start (its headers);
// the notes are read from r, which holds the whole size-byte image.
func isVmlinux(b []byte, r io.ReaderAt, size int64) bool {
	if !isELF64(b) {
		return false
	}
	f, err := parseELFSized(b, size)
	if err != nil {
		return false
	}
	for _, ph := range f.Notes {
		notes := make([]byte, min(ph.Filesz, maxNotes))
		if _, err := r.ReadAt(notes, int64(ph.Off)); err != nil {
			continue
		}
		for len(notes) >= 12 {
			namesz, descsz := le.Uint32(notes[0:]), le.Uint32(notes[4:])
			nameEnd := 12 + uint64(namesz)
			if nameEnd > uint64(len(notes)) {
				break
			}
			if namesz == uint32(len(vmlinuxNoteName)+1) && string(notes[12:12+len(vmlinuxNoteName)]) == vmlinuxNoteName {
				return true
			}
			next := alignUp(nameEnd, 4) + alignUp(uint64(descsz), 4)
			if next > uint64(len(notes)) {
				break
			}
			notes = notes[next:]
		}
	}
	return false
}

// maxNotes bounds how much of a note segment isVmlinux reads.
const maxNotes = 64 << 10

// loadVmlinux boots an uncompressed Linux kernel (the ELF vmlinux that a
// bzImage wraps compressed): its segments go where they say, the zero page
// gets the setup header a bzImage would have carried, and the vCPU enters
// startup_64 in long mode with RSI pointing at the zero page, exactly as the
// bzImage's own decompressor would hand over. Skipping the in-guest
// decompression is what makes Firecracker-style boots fast.
func loadVmlinux(mem *memory.Memory, p Params) (*Entry, error) {
	size := int64(len(p.Kernel))
	if p.KernelFile != nil {
		size = p.KernelSize
	}
	f, err := parseELFSized(p.Kernel, size)
	if err != nil {
		return nil, fmt.Errorf("vmlinux: %w", err)
	}
	reserved := []span{
		{gdtAddr, 0x100, "GDT"},
		{zeroPageAddr, memory.PageSize, "zero page"},
		{stackBase, stackTop + 0x10 - stackBase, "boot stack"},
		{pml4Addr, pageTablesEnd - pml4Addr, "page tables"},
		{cmdlineAddr, cmdlineMax, "command line"},
	}
	loaded, err := loadSegments(mem, f, p.Kernel, p.KernelFile, reserved)
	if err != nil {
		return nil, fmt.Errorf("vmlinux: %w", err)
	}
	entry := f.physEntry()
	if entry >= 1<<32 {
		return nil, fmt.Errorf("vmlinux: entry point %#x is outside the identity-mapped low 4 GiB", f.Entry)
	}
	tables, err := writeTables(mem, p.CPUs, p.ACPI, loaded)
	if err != nil {
		return nil, fmt.Errorf("vmlinux: %w", err)
	}
	rsdp := tables.RSDP()
	zp := make([]byte, memory.PageSize)
	le.PutUint16(zp[bootFlagOffset:], bootFlag)
	copy(zp[hdrMagic:], "HdrS")
	le.PutUint16(zp[hdrVersion:], vmlinuxVersion)
	zp[hdrTypeOfLoader] = loaderUnknown
	zp[hdrLoadFlags] = loadedHigh | canUseHeap
	le.PutUint16(zp[hdrHeapEndPtr:], heapEnd)
	le.PutUint32(zp[hdrInitrdAddrMax:], vmlinuxInitrdMax)
	le.PutUint32(zp[hdrKernelAlign:], vmlinuxKernelAlign)
	le.PutUint32(zp[hdrCmdlineSize:], vmlinuxCmdlineSize)
	le.PutUint64(zp[bpACPIRSDPAddr:], rsdp)
	e, err := finishZeroPage(mem, p, zp, spansEnd(loaded), lowEnd(mem), entry)
	if err != nil {
		return nil, fmt.Errorf("vmlinux: %w", err)
	}
	e.VMGenIDAddr = tables.VMGenID
	return e, nil
}

// placeInitrd puts an initrd of size bytes as high as it goes: page aligned,
// ending at or below initrd_addr_max and the end of low RAM, and above the
// kernel's decompression area (which ends at kernelEnd).
func placeInitrd(size, addrMax, kernelEnd, low uint64) (uint64, error) {
	if addrMax == 0 {
		addrMax = 0x37ff_ffff // the default before protocol 2.03
	}
	top := min(addrMax+1, low)
	if size > top || (top-size)&^(memory.PageSize-1) < kernelEnd {
		return 0, fmt.Errorf("initrd of %d bytes does not fit between the kernel (ends at %#x) and %#x", size, kernelEnd, top)
	}
	return (top - size) &^ (memory.PageSize - 1), nil
}

// place copies n bytes from offset off of an image into guest RAM at gpa:
// from f straight into guest memory when set, else from b.
func place(mem *memory.Memory, gpa uint64, b []byte, f io.ReaderAt, off, n int64) error {
	dst, err := mem.Slice(gpa, uint64(n))
	if err != nil {
		return err
	}
	if f == nil {
		copy(dst, b[off:off+n])
		return nil
	}
	if _, err := f.ReadAt(dst, off); err != nil {
		return fmt.Errorf("read image: %w", err)
	}
	return nil
}
