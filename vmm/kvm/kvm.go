package kvm

import (
	"errors"
	"fmt"

	"unsafe"

	"golang.org/x/sys/unix"
)

// APIVersion is the only KVM API version there has ever been.
const APIVersion = 12

// ErrNoKVM says /dev/kvm is missing or unusable; its message tells the user
// what to do.
var ErrNoKVM = errors.New("/dev/kvm is not available: sfvmm needs a Linux host with KVM " +
	"(load kvm-intel or kvm-amd, enable virtualization in the firmware or for this VM, " +
	"and give this user read-write access to /dev/kvm); on a machine without KVM run " +
	"tests through the nested sandbox: go run ./tests/kvmbox -- CMD")

// System is an open /dev/kvm. It owns its file descriptor explicitly (an
// *os.File could be garbage-collected and closed under a live VM).
type System struct {
	fd int
}

// Open opens /dev/kvm and checks the API version.
func Open() (*System, error) {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w (open: %v)", ErrNoKVM, err)
	}
	v, err := callValue(fd, "KVM_GET_API_VERSION", reqGetAPIVersion, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%w (%v)", ErrNoKVM, err)
	}
	if v != APIVersion {
		unix.Close(fd)
		return nil, fmt.Errorf("%w (KVM API version %d, want %d)", ErrNoKVM, v, APIVersion)
	}
	return &System{fd: fd}, nil
}

// Available reports whether /dev/kvm can be opened and used.
func Available() bool {
	s, err := Open()
	if err != nil {
		return false
	}
	s.Close()
	return true
}

// Close closes /dev/kvm.
func (s *System) Close() error { return unix.Close(s.fd) }

// CheckExtension returns KVM_CHECK_EXTENSION's answer for capability c.
func (s *System) CheckExtension(c int) int {
	r, err := ioctlValue(s.fd, reqCheckExtension, uintptr(c))
	if err != nil {
		return 0
	}
	return int(r)
}

// MaxVCPUs is the most vCPUs one VM may have on this host.
func (s *System) MaxVCPUs() int {
	if n := s.CheckExtension(CapMaxVCPUs); n > 0 {
		return n
	}
	if n := s.CheckExtension(CapNrVCPUs); n > 0 {
		return n
	}
	return 4 // the documented default when neither capability is reported
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID, including KVM's
// paravirtual leaves (0x40000000...).
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := 128; n <= 4096; n *= 2 {
		buf := make([]byte, 8+n*int(unsafe.Sizeof(CPUIDEntry{})))
		*(*uint32)(unsafe.Pointer(&buf[0])) = uint32(n)
		_, err := ioctl(s.fd, reqGetSupportedCPUID, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		got := *(*uint32)(unsafe.Pointer(&buf[0]))
		entries := unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&buf[8])), got)
		return append([]CPUIDEntry(nil), entries...), nil
	}
	return nil, errors.New("KVM_GET_SUPPORTED_CPUID: too many entries")
}

func (s *System) vcpuMmapSize() (int, error) {
	r, err := callValue(s.fd, "KVM_GET_VCPU_MMAP_SIZE", reqGetVCPUMmapSize, 0)
	return int(r), err
}

// VM is a KVM virtual machine file descriptor.
type VM struct {
	sys *System
	fd  int
}

// CreateVM creates an empty VM.
func (s *System) CreateVM() (*VM, error) {
	r, err := callValue(s.fd, "KVM_CREATE_VM", reqCreateVM, 0)
	if err != nil {
		return nil, err
	}
	return &VM{sys: s, fd: int(r)}, nil
}

// Close closes the VM file descriptor.
func (vm *VM) Close() error { return unix.Close(vm.fd) }

// SetUserMemoryRegion maps host memory at hva into the guest at gpa.
func (vm *VM) SetUserMemoryRegion(slot uint32, gpa uint64, mem []byte) error {
	r := UserspaceMemoryRegion{
		Slot:          slot,
		GuestPhysAddr: gpa,
		MemorySize:    uint64(len(mem)),
		UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0]))),
	}
	_, err := call(vm.fd, "KVM_SET_USER_MEMORY_REGION", reqSetUserMemRegion, unsafe.Pointer(&r))
	return err
}

// SetTSSAddr places the three-page TSS that Intel's VMX needs for real mode.
func (vm *VM) SetTSSAddr(addr uint64) error {
	_, err := callValue(vm.fd, "KVM_SET_TSS_ADDR", reqSetTSSAddr, uintptr(addr))
	return err
}

// SetIdentityMapAddr places the one-page identity map VMX needs.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	_, err := call(vm.fd, "KVM_SET_IDENTITY_MAP_ADDR", reqSetIdentityMapAddr, unsafe.Pointer(&addr))
	return err
}

// CreateIRQChip creates the in-kernel PICs, IOAPIC and LAPICs.
func (vm *VM) CreateIRQChip() error {
	_, err := callValue(vm.fd, "KVM_CREATE_IRQCHIP", reqCreateIRQChip, 0)
	return err
}

// CreatePIT2 creates the in-kernel i8254 PIT (with a dummy speaker port).
func (vm *VM) CreatePIT2() error {
	var cfg [16]uint32
	cfg[0] = 1 // KVM_PIT_SPEAKER_DUMMY
	_, err := call(vm.fd, "KVM_CREATE_PIT2", reqCreatePIT2, unsafe.Pointer(&cfg[0]))
	return err
}

// IRQLine sets the level of interrupt line irq.
func (vm *VM) IRQLine(irq uint32, level bool) error {
	l := [2]uint32{irq, 0}
	if level {
		l[1] = 1
	}
	_, err := callRaw(vm.fd, "KVM_IRQ_LINE", reqIRQLine, unsafe.Pointer(&l[0]))
	return err
}

// ioeventfd is struct kvm_ioeventfd.
type ioeventfd struct {
	datamatch uint64
	addr      uint64
	len       uint32
	fd        int32
	flags     uint32
	_         [36]byte
}

const ioeventfdDatamatch = 1 << 0 // KVM_IOEVENTFD_FLAG_DATAMATCH

// IOEventFD makes a guest's MMIO write of size bytes (1, 2, 4 or 8) of
// value to addr signal the eventfd fd inside KVM, where the vCPU goes
// straight back to the guest, instead of exiting to the VMM.
func (vm *VM) IOEventFD(addr uint64, size, value uint32, fd int) error {
	e := ioeventfd{datamatch: uint64(value), addr: addr, len: size, fd: int32(fd), flags: ioeventfdDatamatch}
	_, err := call(vm.fd, "KVM_IOEVENTFD", reqIOEventFD, unsafe.Pointer(&e))
	return err
}

// msi is struct kvm_msi.
type msi struct {
	addressLo, addressHi, data, flags, devid uint32
	_                                        [12]byte
}

// SignalMSI sends an MSI message (address, data) to the guest's local
// APICs, as a PCI function's write would.
func (vm *VM) SignalMSI(addr uint64, data uint32) error {
	m := msi{addressLo: uint32(addr), addressHi: uint32(addr >> 32), data: data}
	// A positive result is the delivery; 0 says the guest's APIC
	// blocked it, which is the guest's business.
	_, err := callRaw(vm.fd, "KVM_SIGNAL_MSI", reqSignalMSI, unsafe.Pointer(&m))
	return err
}

// VCPU is a KVM vCPU with its mapped kvm_run page.
type VCPU struct {
	ID  int
	fd  int
	run []byte
}

// CreateVCPU creates vCPU id and maps its kvm_run page.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	r, err := callValue(vm.fd, "KVM_CREATE_VCPU", reqCreateVCPU, uintptr(id))
	if err != nil {
		return nil, err
	}
	fd := int(r)
	size, err := vm.sys.vcpuMmapSize()
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	run, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mmap kvm_run: %w", err)
	}
	return &VCPU{ID: id, fd: fd, run: run}, nil
}

// Close unmaps kvm_run and closes the vCPU.
func (c *VCPU) Close() error {
	return errors.Join(unix.Munmap(c.run), unix.Close(c.fd))
}

// RunData returns the vCPU's kvm_run page.
func (c *VCPU) RunData() RunData { return RunData{b: c.run} }

// Run enters the guest until the next exit. An interrupted run (a signal,
// immediate_exit) returns unix.EINTR unwrapped, so the caller can tell it
// from a failure.
//
// With keepP, the ioctl bypasses the Go runtime's system-call entry
// (RawSyscall), so the calling goroutine keeps its P while the guest runs:
// the caller must have raised GOMAXPROCS for it, and every wait inside the
// run must end at a signal, or a stop of the world waits for it. The
// runtime's entry costs more than it looks for a vCPU when no P is idle:
// sysmon then takes the P of a thread in a system call at its next look,
// hands it to another thread and polls every 20 µs after each handoff,
// so a guest that exits often (a disk in use) keeps sysmon and the
// scheduler waking. The runtime still preempts a goroutine that holds its
// P this way: its signal interrupts KVM_RUN (EINTR).
func (c *VCPU) Run(keepP bool) error {
	// Not retried on EINTR, unlike the other ioctls: the caller must see
	// the interruption to honour a stop or a pause.
	var e unix.Errno
	if keepP {
		_, _, e = unix.RawSyscall(unix.SYS_IOCTL, uintptr(c.fd), reqRun, 0)
	} else {
		_, _, e = unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), reqRun, 0)
	}
	if e == unix.EINTR || e == unix.EAGAIN {
		return unix.EINTR
	}
	if e != 0 {
		return fmt.Errorf("KVM_RUN: %w", e)
	}
	return nil
}

// GetRegs reads the general registers.
func (c *VCPU) GetRegs() (Regs, error) {
	var r Regs
	_, err := call(c.fd, "KVM_GET_REGS", reqGetRegs, unsafe.Pointer(&r))
	return r, err
}

// SetRegs writes the general registers.
func (c *VCPU) SetRegs(r Regs) error {
	_, err := call(c.fd, "KVM_SET_REGS", reqSetRegs, unsafe.Pointer(&r))
	return err
}

// GetSregs reads the special registers.
func (c *VCPU) GetSregs() (Sregs, error) {
	var s Sregs
	_, err := call(c.fd, "KVM_GET_SREGS", reqGetSregs, unsafe.Pointer(&s))
	return s, err
}

// SetSregs writes the special registers.
func (c *VCPU) SetSregs(s Sregs) error {
	_, err := call(c.fd, "KVM_SET_SREGS", reqSetSregs, unsafe.Pointer(&s))
	return err
}

// SetCPUID2 sets the CPUID leaves the guest sees.
func (c *VCPU) SetCPUID2(entries []CPUIDEntry) error {
	buf := make([]byte, 8+len(entries)*int(unsafe.Sizeof(CPUIDEntry{})))
	*(*uint32)(unsafe.Pointer(&buf[0])) = uint32(len(entries))
	copy(unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&buf[8])), len(entries)), entries)
	_, err := call(c.fd, "KVM_SET_CPUID2", reqSetCPUID2, unsafe.Pointer(&buf[0]))
	return err
}

// GetLAPIC reads the local APIC register page.
func (c *VCPU) GetLAPIC() (LAPIC, error) {
	var l LAPIC
	_, err := call(c.fd, "KVM_GET_LAPIC", reqGetLAPIC, unsafe.Pointer(&l))
	return l, err
}

// SetLAPIC writes the local APIC register page.
func (c *VCPU) SetLAPIC(l LAPIC) error {
	_, err := call(c.fd, "KVM_SET_LAPIC", reqSetLAPIC, unsafe.Pointer(&l))
	return err
}

// SetMSRs writes model-specific registers.
func (c *VCPU) SetMSRs(entries []MSREntry) error {
	buf := make([]byte, 8+len(entries)*int(unsafe.Sizeof(MSREntry{})))
	*(*uint32)(unsafe.Pointer(&buf[0])) = uint32(len(entries))
	copy(unsafe.Slice((*MSREntry)(unsafe.Pointer(&buf[8])), len(entries)), entries)
	n, err := call(c.fd, "KVM_SET_MSRS", reqSetMSRs, unsafe.Pointer(&buf[0]))
	if err == nil && int(n) != len(entries) {
		return fmt.Errorf("KVM_SET_MSRS: set %d of %d (MSR %#x refused)", n, len(entries), entries[n].Index)
	}
	return err
}

// GetMPState reads the multiprocessing state (MPStateRunnable, ...).
func (c *VCPU) GetMPState() (uint32, error) {
	var s uint32
	_, err := call(c.fd, "KVM_GET_MP_STATE", reqGetMPState, unsafe.Pointer(&s))
	return s, err
}
