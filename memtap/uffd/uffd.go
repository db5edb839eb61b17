// Package uffd is a small wrapper over Linux userfaultfd(2): open a
// userfaultfd, negotiate its API, register ranges for missing-page and
// write-protect faults, read fault messages and resolve them with COPY,
// ZEROPAGE, WRITEPROTECT and WAKE.
//
// It is the mechanism only: which pages to fill, and from where, is memtap's
// business. Addresses are plain uintptrs because the process that resolves
// faults is often not the one whose memory faults (the ioctls act on the mm
// the userfaultfd was created in, whoever holds the descriptor).
//
// Descriptors are opened without UFFD_USER_MODE_ONLY: KVM touches guest
// memory from kernel mode (get_user_pages on behalf of a vCPU), and a
// user-mode-only userfaultfd would make those faults fail instead of wait.
package uffd

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PageSize is the page size the ioctls are used with: ranges must be
// multiples of it and aligned to it.
const PageSize = 4096

// ioctl numbers, from <linux/userfaultfd.h>: _IOWR/_IOR(0xAA, nr, struct).
const (
	iocNew          = 0xAA00     // USERFAULTFD_IOC_NEW on /dev/userfaultfd
	iocAPI          = 0xC018AA3F // UFFDIO_API, struct uffdio_api
	iocRegister     = 0xC020AA00 // UFFDIO_REGISTER, struct uffdio_register
	iocUnregister   = 0x8010AA01 // UFFDIO_UNREGISTER, struct uffdio_range
	iocWake         = 0x8010AA02 // UFFDIO_WAKE, struct uffdio_range
	iocCopy         = 0xC028AA03 // UFFDIO_COPY, struct uffdio_copy
	iocZeropage     = 0xC020AA04 // UFFDIO_ZEROPAGE, struct uffdio_zeropage
	iocWriteProtect = 0xC018AA06 // UFFDIO_WRITEPROTECT, struct uffdio_writeprotect

	apiVersion = 0xAA // UFFD_API
)

// Bits of the ioctls mask UFFDIO_REGISTER returns for a range.
const (
	IoctlWake         = 1 << 0x02
	IoctlCopy         = 1 << 0x03
	IoctlZeropage     = 1 << 0x04
	IoctlWriteProtect = 1 << 0x06
)

// Features negotiated with API (UFFD_FEATURE_*).
const (
	// FeatureWP enables write-protect faults (UFFD_FEATURE_PAGEFAULT_FLAG_WP).
	FeatureWP = 1 << 0
	// FeatureThreadID reports the faulting thread's ID in each message.
	FeatureThreadID = 1 << 8
)

// Register modes (UFFDIO_REGISTER_MODE_*).
const (
	ModeMissing = 1 << 0
	ModeWP      = 1 << 1
)

// Modes of Copy and ZeroPage.
const (
	// DontWake leaves the threads waiting on the range asleep; a later
	// Wake (or a waking Copy) releases them.
	DontWake = 1 << 0
	// CopyWP maps the copied pages write-protected (UFFDIO_COPY_MODE_WP).
	CopyWP = 1 << 1
)

// Fault message values.
const (
	EventPagefault = 0x12
	// FlagWrite marks a fault caused by a write.
	FlagWrite = 1 << 0
	// FlagWP marks a write-protect fault (else it is a missing-page fault).
	FlagWP = 1 << 1
)

// Kernel structures. Sizes are checked by tests against <linux/userfaultfd.h>.
type (
	apiArg struct {
		API      uint64
		Features uint64
		Ioctls   uint64
	}
	rangeArg struct {
		Start uint64
		Len   uint64
	}
	registerArg struct {
		Range  rangeArg
		Mode   uint64
		Ioctls uint64
	}
	copyArg struct {
		Dst  uint64
		Src  uint64
		Len  uint64
		Mode uint64
		Copy int64
	}
	zeropageArg struct {
		Range    rangeArg
		Mode     uint64
		Zeropage int64
	}
	writeProtectArg struct {
		Range rangeArg
		Mode  uint64
	}
)

// Msg is one struct uffd_msg as read from the descriptor. Only page-fault
// events are enabled, so only those fields are decoded.
type Msg struct {
	Event    uint8
	_        [7]uint8
	Flags    uint64 // FlagWrite, FlagWP
	Address  uint64 // faulting address (page aligned unless EXACT_ADDRESS)
	ThreadID uint32 // with FeatureThreadID
	_        uint32
}

// MsgSize is sizeof(struct uffd_msg).
const MsgSize = 32

// FD is an open userfaultfd. Its methods may be called from several
// goroutines at once: the kernel serialises what needs it.
type FD struct {
	fd int
}

// New opens a userfaultfd with the open flags in flags (unix.O_CLOEXEC,
// unix.O_NONBLOCK). It asks /dev/userfaultfd first, which works for root
// and for members of its group whatever vm.unprivileged_userfaultfd says,
// and falls back to the userfaultfd system call.
func New(flags int) (*FD, error) {
	fd, err := openDev(flags)
	if err != nil {
		var err2 error
		fd, err2 = openSyscall(flags)
		if err2 != nil {
			return nil, fmt.Errorf("open userfaultfd: /dev/userfaultfd: %w; userfaultfd(2): %w", err, err2)
		}
	}
	return &FD{fd: fd}, nil
}

func openDev(flags int) (int, error) {
	dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(dev)
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), iocNew, uintptr(flags))
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

func openSyscall(flags int) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// FromFd wraps a userfaultfd descriptor received from another process (over
// a Unix socket or inherited). The FD owns fd.
func FromFd(fd int) *FD { return &FD{fd: fd} }

// Fd is the raw descriptor number, to pass it to another process. It stays
// owned by the FD. (The FD is not an *os.File on purpose: os.File.Fd would
// clear O_NONBLOCK, which a poll loop relies on.)
func (u *FD) Fd() int { return u.fd }

// Close closes the descriptor. When the last reference to a userfaultfd is
// closed the kernel unregisters every range and wakes every waiting fault,
// which then proceeds as if userfaultfd had never been there.
func (u *FD) Close() error {
	if u.fd < 0 {
		return nil
	}
	err := unix.Close(u.fd)
	u.fd = -1
	return err
}

func (u *FD) ioctl(req uintptr, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(u.fd), req, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// API performs the UFFDIO_API handshake asking for features, and returns
// the features the kernel offers. It fails if any asked-for feature is
// missing.
func (u *FD) API(features uint64) (uint64, error) {
	a := apiArg{API: apiVersion, Features: features}
	if err := u.ioctl(iocAPI, unsafe.Pointer(&a)); err != nil {
		return 0, fmt.Errorf("UFFDIO_API (features %#x): %w", features, err)
	}
	if a.Features&features != features {
		return a.Features, fmt.Errorf("UFFDIO_API: kernel lacks features %#x", features&^a.Features)
	}
	return a.Features, nil
}

func checkRange(start, n uintptr) error {
	if start%PageSize != 0 || n%PageSize != 0 || n == 0 {
		return fmt.Errorf("range [%#x, +%#x) is not page aligned", start, n)
	}
	return nil
}

// Register registers [start, start+n) with mode (ModeMissing, ModeWP) and
// returns the mask of range ioctls available on it (IoctlCopy, ...).
func (u *FD) Register(start, n uintptr, mode uint64) (uint64, error) {
	if err := checkRange(start, n); err != nil {
		return 0, fmt.Errorf("UFFDIO_REGISTER: %w", err)
	}
	r := registerArg{Range: rangeArg{uint64(start), uint64(n)}, Mode: mode}
	if err := u.ioctl(iocRegister, unsafe.Pointer(&r)); err != nil {
		return 0, fmt.Errorf("UFFDIO_REGISTER [%#x, +%#x) mode %#x: %w", start, n, mode, err)
	}
	return r.Ioctls, nil
}

// Unregister removes [start, start+n) from the descriptor.
func (u *FD) Unregister(start, n uintptr) error {
	r := rangeArg{uint64(start), uint64(n)}
	if err := u.ioctl(iocUnregister, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("UFFDIO_UNREGISTER [%#x, +%#x): %w", start, n, err)
	}
	return nil
}

// Wake wakes the threads waiting on faults in [start, start+n).
func (u *FD) Wake(start, n uintptr) error {
	r := rangeArg{uint64(start), uint64(n)}
	if err := u.ioctl(iocWake, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("UFFDIO_WAKE [%#x, +%#x): %w", start, n, err)
	}
	return nil
}

// Copy atomically installs n bytes from src at dst, which must be a missing
// range registered with ModeMissing, and wakes its waiters unless mode has
// DontWake. Pages that are already present are skipped, not overwritten:
// another fault or an earlier prefetch won the race and its content is
// the same. Copy returns the bytes it installed; a page it skipped because
// it was present counts in skipped. When pages are skipped and mode lacks
// DontWake, the whole range is woken, so that no thread stays asleep on a
// page someone else filled without waking.
func (u *FD) Copy(dst, src, n uintptr, mode uint64) (installed, skipped uintptr, err error) {
	if err := checkRange(dst, n); err != nil {
		return 0, 0, fmt.Errorf("UFFDIO_COPY: %w", err)
	}
	for off := uintptr(0); off < n; {
		c := copyArg{Dst: uint64(dst + off), Src: uint64(src + off), Len: uint64(n - off), Mode: mode}
		err := u.ioctl(iocCopy, unsafe.Pointer(&c))
		if c.Copy > 0 {
			off += uintptr(c.Copy)
			installed += uintptr(c.Copy)
		}
		switch {
		case err == nil:
			// A full copy returns 0; a short one reports its length.
			if c.Copy <= 0 {
				installed += n - off
				off = n
			}
		case errors.Is(err, unix.EAGAIN):
			// The mm changed under the copy (or it was cut short): go on
			// from where it stopped.
		case errors.Is(err, unix.EEXIST):
			// The page at off is present; skip it.
			off += PageSize
			skipped += PageSize
		default:
			return installed, skipped, fmt.Errorf("UFFDIO_COPY [%#x, +%#x): %w", dst+off, n-off, err)
		}
	}
	if skipped > 0 && mode&DontWake == 0 {
		if err := u.Wake(dst, n); err != nil {
			return installed, skipped, err
		}
	}
	return installed, skipped, nil
}

// ZeroPage maps the zero page over the missing pages of [start, start+n)
// and wakes their waiters unless mode has DontWake. Present pages are
// skipped as in Copy.
func (u *FD) ZeroPage(start, n uintptr, mode uint64) (installed, skipped uintptr, err error) {
	if err := checkRange(start, n); err != nil {
		return 0, 0, fmt.Errorf("UFFDIO_ZEROPAGE: %w", err)
	}
	for off := uintptr(0); off < n; {
		z := zeropageArg{Range: rangeArg{uint64(start + off), uint64(n - off)}, Mode: mode}
		err := u.ioctl(iocZeropage, unsafe.Pointer(&z))
		if z.Zeropage > 0 {
			off += uintptr(z.Zeropage)
			installed += uintptr(z.Zeropage)
		}
		switch {
		case err == nil:
			if z.Zeropage <= 0 {
				installed += n - off
				off = n
			}
		case errors.Is(err, unix.EAGAIN):
		case errors.Is(err, unix.EEXIST):
			off += PageSize
			skipped += PageSize
		default:
			return installed, skipped, fmt.Errorf("UFFDIO_ZEROPAGE [%#x, +%#x): %w", start+off, n-off, err)
		}
	}
	if skipped > 0 && mode&DontWake == 0 {
		if err := u.Wake(start, n); err != nil {
			return installed, skipped, err
		}
	}
	return installed, skipped, nil
}

// WriteProtect sets (protect) or lifts the write protection of
// [start, start+n), a range registered with ModeWP. Lifting it wakes the
// threads waiting on write-protect faults in the range unless dontWake.
func (u *FD) WriteProtect(start, n uintptr, protect, dontWake bool) error {
	if err := checkRange(start, n); err != nil {
		return fmt.Errorf("UFFDIO_WRITEPROTECT: %w", err)
	}
	w := writeProtectArg{Range: rangeArg{uint64(start), uint64(n)}}
	if protect {
		w.Mode |= 1
	}
	if dontWake {
		w.Mode |= 2
	}
	for {
		err := u.ioctl(iocWriteProtect, unsafe.Pointer(&w))
		if errors.Is(err, unix.EAGAIN) {
			continue // the mm changed under it; the operation is idempotent
		}
		if err != nil {
			return fmt.Errorf("UFFDIO_WRITEPROTECT [%#x, +%#x) wp=%t: %w", start, n, protect, err)
		}
		return nil
	}
}

// Read reads pending fault messages into msgs and returns how many it read.
// On a non-blocking descriptor with nothing pending it returns 0 and an
// error satisfying errors.Is(err, unix.EAGAIN).
func (u *FD) Read(msgs []Msg) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&msgs[0])), len(msgs)*MsgSize)
	for {
		n, err := unix.Read(u.fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n%MsgSize != 0 {
			return 0, fmt.Errorf("read userfaultfd: %d bytes is not a whole number of messages", n)
		}
		return n / MsgSize, nil
	}
}
