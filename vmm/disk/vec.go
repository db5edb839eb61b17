package disk

import (
	"io"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KeepP has the disk's reads and writes of layers on local storage
// (localfs.Is) keep the serving goroutine's P, as a vCPU's KVM_RUN does
// and for the same reason (kvm.VCPU.Run): through the runtime's
// system-call entry, each request's copy, milliseconds long in the nested
// sandbox, set sysmon polling.
//
// A stop of the world waits for such a call. What bounds the wait is the
// size of a call (keepPMax) and the storage being local; a layer
// elsewhere (NFS, 9p, FUSE, a network or loop block device), whose calls
// a lost server could block for good, goes through the runtime. The copy
// must also not wait for a memory server: KeepP is for machines whose
// vCPUs keep their P, which leaves out clones. (A fork parent's RAM is
// write-protected until its clones are gone, and a write into it waits
// for the memory server's helper process, as the vCPUs' own writes do.)
func (d *Disk) KeepP() { d.keepP.Store(true) }

const (
	// iovMax is the kernel's IOV_MAX: the buffers one call takes.
	iovMax = 1024
	// keepPMax bounds the bytes of one call that keeps its P: Linux's
	// largest request by default (1280 KiB) in one call, and a copy of
	// at most a millisecond or so on a host without nesting.
	keepPMax = 2 << 20
)

// A vecOp is preadv(2) or pwritev(2) of iovs at off, in one call.
type vecOp struct {
	call     func(fd int, iovs [][]byte, off int64) (int, error)
	maxBytes int // the most one call moves; 0: no bound
}

// op is the call that reads (SYS_PREADV) or writes (SYS_PWRITEV) l.
func (l *layer) op(nr uintptr, keepP bool) vecOp {
	if keepP && l.local {
		return vecOp{call: func(fd int, iovs [][]byte, off int64) (int, error) { return rawVec(nr, fd, iovs, off) }, maxBytes: keepPMax}
	}
	if nr == unix.SYS_PREADV {
		return vecOp{call: unix.Preadv}
	}
	return vecOp{call: unix.Pwritev}
}

// vecFull does op of bufs at off until all of bufs is done, in batches
// the kernel and op take.
func vecFull(op vecOp, fd int, bufs [][]byte, off int64) error {
	for total(bufs) > 0 {
		// Empty buffers first would make a batch of nothing.
		for len(bufs[0]) == 0 {
			bufs = bufs[1:]
		}
		n, err := op.call(fd, batch(bufs, op.maxBytes), off)
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		off += int64(n)
		bufs = slice(bufs, n, total(bufs)-n)
	}
	return nil
}

// batch is the head of bufs one call takes: iovMax buffers at most and,
// unless maxBytes is 0, maxBytes bytes at most.
func batch(bufs [][]byte, maxBytes int) [][]byte {
	bufs = bufs[:min(len(bufs), iovMax)]
	if maxBytes == 0 {
		return bufs
	}
	n := 0
	for i, b := range bufs {
		if n+len(b) > maxBytes {
			if n == maxBytes {
				return bufs[:i]
			}
			return append(bufs[:i:i], b[:maxBytes-n])
		}
		n += len(b)
	}
	return bufs
}

// iovecs holds the iovec arrays of rawVec's calls, which would otherwise
// be an allocation per request.
var iovecs = sync.Pool{New: func() any { return new([]unix.Iovec) }}

// rawVec is system call nr (SYS_PREADV or SYS_PWRITEV) of bufs at off,
// made with RawSyscall so that the goroutine keeps its P (KeepP). Buffers
// that follow one another in memory (a guest's contiguous pages) go as
// one iovec.
func rawVec(nr uintptr, fd int, bufs [][]byte, off int64) (int, error) {
	p := iovecs.Get().(*[]unix.Iovec)
	defer iovecs.Put(p)
	iov := (*p)[:0]
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		if k := len(iov) - 1; k >= 0 && uintptr(unsafe.Pointer(iov[k].Base))+uintptr(iov[k].Len) == uintptr(unsafe.Pointer(&b[0])) {
			iov[k].SetLen(int(iov[k].Len) + len(b))
			continue
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		iov = append(iov, v)
	}
	*p = iov
	if len(iov) == 0 {
		return 0, nil
	}
	// preadv's offset comes in two words; a 64-bit kernel takes it all
	// from the first.
	n, _, e := unix.RawSyscall6(nr, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)), uintptr(off), uintptr(off>>32), 0)
	clear(iov) // no pointers into guest RAM left in the pool
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
