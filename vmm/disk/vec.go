package disk

import (
	"io"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KeepP has the disk's reads and writes of layers on local filesystems
// keep the serving goroutine's P, as a vCPU's KVM_RUN does
// (kvm.VCPU.Run), rather than go through the Go runtime's system-call
// entry. That entry costs a busy VMM more than the call: while every P is
// taken (a vCPU keeps one), sysmon takes the P of a thread that has been
// in a system call for one of its ticks, hands it on, and then looks again
// every 20 µs; a 1 MiB request's copy in the nested sandbox woke it about
// 20 times, each a switch away from the copy and back.
//
// Only for a machine whose vCPUs keep their P: the copy into guest RAM
// must never wait for a memory server (a clone's RAM), since a stop of the
// world waits for the call. One call moves at most keepPMax bytes, which
// bounds that wait; and a layer on a network filesystem, whose calls a
// lost server can block for good, always goes through the runtime.
func (d *Disk) KeepP() { d.keepP.Store(true) }

const (
	// iovMax is the kernel's IOV_MAX: the buffers one call takes.
	iovMax = 1024
	// keepPMax bounds the bytes of one call that keeps its P: a 1 MiB
	// request, Linux's usual largest, in one call.
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
			iov[k].Len += uint64(len(b))
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

// localFS says whether f is on a filesystem of local storage, whose reads
// and writes end without a server: those KeepP may make while keeping the
// P. Any other (NFS, SMB, 9p, FUSE, ...) or one fstatfs cannot tell is
// not.
func localFS(f *os.File) bool {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return false
	}
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC, unix.F2FS_SUPER_MAGIC,
		unix.BCACHEFS_SUPER_MAGIC, unix.TMPFS_MAGIC, unix.OVERLAYFS_SUPER_MAGIC:
		return true
	}
	return false
}
