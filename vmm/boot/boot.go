// Package boot loads a guest kernel into guest RAM and says how to start
// vCPU 0. It understands Linux bzImages (the 64-bit boot protocol), multiboot
// v1 kernels (the way QEMU's -kernel loads them, so test kernels written for
// QEMU run unchanged) and bare ELF64 kernels. Because sfvmm runs no firmware,
// it also writes what firmware would have left behind: a memory map, an MP
// table and ACPI tables, a GDT and, for 64-bit entry, identity page tables.
//
// It writes guest memory, and keeps the kernels it unpacks from bzImages in
// a host cache directory (kernelcache.go). Loading the returned Entry into
// the vCPU's registers is the VMM's job; nothing here touches KVM.
//
// # Guest-physical memory map
//
//	0x0_0500              GDT (Long64: 0x10 code, 0x18 data; Protected32: 0x08 code, 0x10 data)
//	0x0_7000 - 0x0_7fff   bzImage zero page (struct boot_params)
//	0x0_8000 - 0x0_8fff   bzImage and ELF64 initial stack (RSP 0x8ff0)
//	0x0_9000 - 0x0_efff   bzImage and ELF64 page tables: PML4, PDPT, 4 PDs of 2 MiB pages
//	0x2_0000 - 0x2_ffff   bzImage command line
//	0x9_fc00 - 0xf_ffff   reserved in the e820 / multiboot memory map
//	0xe_0000 - 0xf_ffff   ACPI tables (RSDP first), from 0xe_0000
//	0xf_0000 - 0xf_ffff   MP floating pointer and configuration table, from 0xf_0000
//	0x10_0000             bzImage protected-mode kernel
//	below 3 GiB           bzImage initrd, as high as initrd_addr_max allows
//
// The ACPI and MP tables are written after the kernel, each at the lowest
// free address of its range: an ELF kernel may have segments there (one
// linked at 1 MiB without a linker script has its ELF headers at 0xff000),
// and only a kernel that leaves a table no room is refused.
//
// Multiboot kernels get only the GDT in low memory, so that 0x1000-0x9_fbff
// stays theirs (test kernels put AP trampolines at 0x8000); their multiboot
// information, memory map, command lines and modules follow the kernel's last
// byte, page aligned. QEMU puts the command lines and modules there too, but
// the information structure at 0x9500 and the memory map at 0x9000, where
// its option ROM can reach them in real mode; sfvmm has no such constraint.
package boot

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/sfvmm/sfvmm/vmm/boot/acpi"
	"github.com/sfvmm/sfvmm/vmm/boot/mptable"
	"github.com/sfvmm/sfvmm/vmm/memory"
)

// Mode is the CPU mode vCPU 0 starts in.
type Mode int

const (
	// Protected32 is 32-bit protected mode with paging off (multiboot).
	Protected32 Mode = iota + 1
	// Long64 is 64-bit long mode on identity-mapped page tables.
	Long64
)

func (m Mode) String() string {
	switch m {
	case Protected32:
		return "protected32"
	case Long64:
		return "long64"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Kind is a kernel image format.
type Kind int

const (
	// BzImage is a Linux bzImage started through the 64-bit boot protocol.
	BzImage Kind = iota + 1
	// Multiboot is a multiboot v1 kernel (ELF32 or a.out kludge).
	Multiboot
	// ELF64 is an x86-64 ELF executable without a multiboot header.
	ELF64
	// Vmlinux is an uncompressed Linux kernel (ELF64 with "Linux" notes),
	// started like a bzImage but without the in-guest decompression.
	Vmlinux
)

func (k Kind) String() string {
	switch k {
	case BzImage:
		return "bzImage"
	case Multiboot:
		return "multiboot"
	case ELF64:
		return "ELF64"
	case Vmlinux:
		return "vmlinux"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// ErrFormat reports a kernel image that is none of the supported kinds.
var ErrFormat = errors.New("not a bzImage, multiboot or ELF64 kernel")

// Module is a multiboot module.
type Module struct {
	Cmdline string // the file name first, then its arguments, as QEMU passes it
	Data    []byte
}

// Params describe what to boot.
type Params struct {
	Kernel []byte // the image file's bytes (with KernelFile: at least its first HeaderBytes)
	// KernelFile, when set, holds the whole image and KernelSize its
	// length: a bzImage's kernel is then read from it straight into guest
	// RAM instead of passing through the VMM's own memory.
	KernelFile io.ReaderAt
	KernelSize int64
	// InitrdFile and InitrdSize likewise stand in for Initrd.
	InitrdFile io.ReaderAt
	InitrdSize int64
	// Cmdline is the bzImage command line, or the multiboot info's
	// cmdline (which, as with QEMU, starts with the kernel's file name:
	// the VMM prepends it with MultibootCmdline). ELF64 kernels get no
	// boot information.
	Cmdline string
	Initrd  []byte   // bzImage only
	Modules []Module // multiboot only
	CPUs    int      // number of vCPUs, 1..255 (0 means 1), for the MP table and MADT
	// ACPI are the devices the DSDT announces besides the fixed ones.
	ACPI acpi.Devices
}

// Segment is the hidden descriptor state of a segment register, as the VMM
// loads it into KVM's sregs. Limit is in bytes (0xffffffff with G set).
// HeaderBytes is how much of an image Detect and the loaders read before
// they know its format: with KernelFile, Kernel must hold this much (or the
// whole image if it is shorter).
const HeaderBytes = 64 << 10

type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
}

// Entry is the state vCPU 0 starts in. General registers not named here are
// zero and RFLAGS is 0x2 (interrupts off).
type Entry struct {
	Mode               Mode
	RIP, RSP, RAX, RBX uint64
	RSI                uint64
	CS                 Segment
	DS                 Segment // also ES, FS, GS and SS
	GDTBase            uint64  // a GDT in guest memory matching CS and DS
	GDTLimit           uint16
	CR0, CR3, CR4      uint64
	EFER               uint64
	// VMGenIDAddr is where the VM generation ID goes (ACPI.VMGenID;
	// 0 without).
	VMGenIDAddr uint64
}

// Detect names the format of a kernel image.
func Detect(kernel []byte) (Kind, error) {
	return DetectFile(kernel, bytes.NewReader(kernel), int64(len(kernel)))
}

// DetectFile names the format of a kernel image of size bytes held by r,
// of which head holds the start (at least HeaderBytes, or all of it).
func DetectFile(head []byte, r io.ReaderAt, size int64) (Kind, error) {
	kernel := head
	if isBzImage(kernel) {
		return BzImage, nil
	}
	if _, ok := findMultiboot(kernel); ok {
		return Multiboot, nil
	}
	if isVmlinux(kernel, r, size) {
		return Vmlinux, nil
	}
	if isELF64(kernel) {
		return ELF64, nil
	}
	if isELF(kernel) {
		return 0, fmt.Errorf("detect kernel: ELF32 image without a multiboot header: %w", ErrFormat)
	}
	return 0, fmt.Errorf("detect kernel: %w", ErrFormat)
}

// Load places the kernel and everything it is handed (initrd, modules,
// command line, boot information, firmware tables) into mem and returns how
// to start vCPU 0. mem should be freshly mapped: Load writes only what it
// places, and the guest may read any other byte of low memory.
func Load(mem *memory.Memory, p Params) (*Entry, error) {
	kind, err := Detect(p.Kernel)
	if p.KernelFile != nil {
		kind, err = DetectFile(p.Kernel, p.KernelFile, p.KernelSize)
	}
	if err != nil {
		return nil, err
	}
	cpus := p.CPUs
	if cpus == 0 {
		cpus = 1
	}
	if cpus < 1 || cpus > maxCPUs {
		return nil, fmt.Errorf("load %s: %d vCPUs is outside 1..%d", kind, p.CPUs, maxCPUs)
	}
	if low := lowEnd(mem); low < highMemStart {
		return nil, fmt.Errorf("load %s: guest RAM (%d KiB) is smaller than the 1 MiB boot area", kind, low>>10)
	}
	if (len(p.Initrd) > 0 || p.InitrdFile != nil) && kind != BzImage && kind != Vmlinux {
		return nil, fmt.Errorf("load %s: an initrd is only for bzImages (multiboot kernels take modules)", kind)
	}
	if len(p.Modules) > 0 && kind != Multiboot {
		return nil, fmt.Errorf("load %s: modules are only for multiboot kernels", kind)
	}
	p.CPUs = cpus
	switch kind {
	case BzImage:
		return loadBzImage(mem, p)
	case Vmlinux:
		return loadVmlinux(mem, p)
	case Multiboot:
		return loadMultiboot(mem, p)
	default:
		return loadELF64(mem, p)
	}
}

// writeTables writes the MP table and the ACPI tables where guests scan for
// them, each at the lowest address of its window that none of the kernel's
// loaded segments (kernel) covers, and returns the RSDP's address. It runs
// after the kernel is loaded so that only a kernel filling a window
// conflicts with the tables: a kernel linked at 1 MiB without a linker
// script has its ELF headers in a segment at 0xff000, which QEMU loads and
// so must sfvmm. The MP table goes first, its window being the narrower.
func writeTables(mem *memory.Memory, cpus int, devs acpi.Devices, kernel []span) (*acpi.Tables, error) {
	// The tables' sizes do not depend on where they go: build once to
	// learn the size, then again for the address found.
	mp, err := mptable.Build(mptableWindow, cpus)
	if err != nil {
		return nil, err
	}
	mpAt, err := findFree(mptableWindow, biosAreaEnd, uint64(len(mp)), mptableAlign, kernel)
	if err != nil {
		return nil, fmt.Errorf("mptable: %w", err)
	}
	if mp, err = mptable.Build(mpAt, cpus); err != nil {
		return nil, err
	}
	if _, err := mem.WriteAt(mp, int64(mpAt)); err != nil {
		return nil, fmt.Errorf("mptable: write table: %w", err)
	}

	used := append(slices.Clip(kernel), span{mpAt, uint64(len(mp)), "MP table"})
	t, err := acpi.Build(acpiWindow, cpus, devs)
	if err != nil {
		return nil, err
	}
	acpiAt, err := findFree(acpiWindow, biosAreaEnd, uint64(len(t.Data)), acpiAlign, used)
	if err != nil {
		return nil, fmt.Errorf("acpi: %w", err)
	}
	if t, err = acpi.Build(acpiAt, cpus, devs); err != nil {
		return nil, err
	}
	if _, err := mem.WriteAt(t.Data, int64(acpiAt)); err != nil {
		return nil, fmt.Errorf("acpi: write tables: %w", err)
	}
	return t, nil
}
