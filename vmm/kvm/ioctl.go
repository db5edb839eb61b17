// Package kvm is sfvmm's thin layer over the /dev/kvm ioctl interface: the
// struct layouts of <linux/kvm.h> for x86-64 and one Go function per ioctl.
// It holds no policy (no memory layout, no boot state, no run loop); the vmm
// package builds machines out of it.
package kvm

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

const kvmio = 0xAE

func io(nr uintptr) uintptr               { return kvmio<<8 | nr }
func iow(nr, size uintptr) uintptr        { return 1<<30 | size<<16 | kvmio<<8 | nr }
func ior(nr, size uintptr) uintptr        { return 2<<30 | size<<16 | kvmio<<8 | nr }
func iowr(nr, size uintptr) uintptr       { return 3<<30 | size<<16 | kvmio<<8 | nr }
func sizeof[T any]() uintptr              { var v T; return unsafe.Sizeof(v) }
func errno(op string, e unix.Errno) error { return fmt.Errorf("%s: %w", op, e) }

// ioctl runs an ioctl whose argument points at memory the kernel reads or
// writes, retrying EINTR. The pointer stays an unsafe.Pointer until the
// syscall itself: Go moves a goroutine's stack, and the variables on it,
// when the stack grows, and updates pointers but not uintptrs, so an address
// taken as a uintptr one call earlier can name the old stack by the time
// the kernel uses it (the kernel then fills or reads freed memory while the
// variable keeps its old contents).
func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return r, e
		}
		return r, nil
	}
}

// ioctlValue runs an ioctl whose argument is a number, retrying EINTR.
func ioctlValue(fd int, req, arg uintptr) (uintptr, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return r, e
		}
		return r, nil
	}
}

// call runs ioctl and names it in the error.
func call(fd int, name string, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, err := ioctl(fd, req, arg)
	return r, named(name, err)
}

// callRaw is call for an ioctl that never blocks, made with RawSyscall so
// that the goroutine keeps its P (why that matters: VCPU.Run). Raising an
// interrupt (KVM_IRQ_LINE, KVM_SIGNAL_MSI) wakes the vCPU, and where the
// vCPU's thread takes the CPU at once, the caller stays preempted inside
// the call while the guest runs: through the runtime's entry, its P would
// count as one in a system call all that time. Neither ioctl sleeps, so
// neither returns EINTR.
func callRaw(fd int, name string, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, e := unix.RawSyscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return r, errno(name, e)
	}
	return r, nil
}

// callValue runs ioctlValue and names it in the error.
func callValue(fd int, name string, req, arg uintptr) (uintptr, error) {
	r, err := ioctlValue(fd, req, arg)
	return r, named(name, err)
}

func named(name string, err error) error {
	var e unix.Errno
	if errors.As(err, &e) {
		return errno(name, e)
	}
	return err
}

var (
	reqGetAPIVersion      = io(0x00)
	reqCreateVM           = io(0x01)
	reqCheckExtension     = io(0x03)
	reqGetVCPUMmapSize    = io(0x04)
	reqGetSupportedCPUID  = iowr(0x05, 8)
	reqCreateVCPU         = io(0x41)
	reqSetUserMemRegion   = iow(0x46, sizeof[UserspaceMemoryRegion]())
	reqSetTSSAddr         = io(0x47)
	reqSetIdentityMapAddr = iow(0x48, 8)
	reqCreateIRQChip      = io(0x60)
	reqIRQLine            = iow(0x61, 8)
	reqCreatePIT2         = iow(0x77, 64)
	reqIOEventFD          = iow(0x79, 64)
	reqSignalMSI          = iow(0xa5, sizeof[msi]())
	reqGetStatsFD         = io(0xce)
	reqRun                = io(0x80)
	reqGetRegs            = ior(0x81, sizeof[Regs]())
	reqSetRegs            = iow(0x82, sizeof[Regs]())
	reqGetSregs           = ior(0x83, sizeof[Sregs]())
	reqSetSregs           = iow(0x84, sizeof[Sregs]())
	reqSetMSRs            = iow(0x89, 8)
	reqGetLAPIC           = ior(0x8e, sizeof[LAPIC]())
	reqSetLAPIC           = iow(0x8f, sizeof[LAPIC]())
	reqSetCPUID2          = iow(0x90, 8)
	reqGetMPState         = ior(0x98, 4)
)
