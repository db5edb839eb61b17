package uffd

import (
	"bytes"
	"errors"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioc computes an ioctl number as <asm-generic/ioctl.h> does.
func ioc(dir, typ, nr, size uintptr) uintptr { return dir<<30 | size<<16 | typ<<8 | nr }

func TestLayout(t *testing.T) {
	const read, write = 2, 1
	tests := []struct {
		name       string
		size, want uintptr // want: sizeof in <linux/userfaultfd.h>
		ioctl, dir uintptr
		nr         uintptr
	}{
		{"uffdio_api", unsafe.Sizeof(apiArg{}), 24, iocAPI, read | write, 0x3F},
		{"uffdio_register", unsafe.Sizeof(registerArg{}), 32, iocRegister, read | write, 0x00},
		{"uffdio_range (unregister)", unsafe.Sizeof(rangeArg{}), 16, iocUnregister, read, 0x01},
		{"uffdio_range (wake)", unsafe.Sizeof(rangeArg{}), 16, iocWake, read, 0x02},
		{"uffdio_copy", unsafe.Sizeof(copyArg{}), 40, iocCopy, read | write, 0x03},
		{"uffdio_zeropage", unsafe.Sizeof(zeropageArg{}), 32, iocZeropage, read | write, 0x04},
		{"uffdio_writeprotect", unsafe.Sizeof(writeProtectArg{}), 24, iocWriteProtect, read | write, 0x06},
		{"uffd_msg", unsafe.Sizeof(Msg{}), MsgSize, 0, 0, 0},
	}
	for _, tt := range tests {
		if tt.size != tt.want {
			t.Errorf("sizeof(%s) = %d, want %d", tt.name, tt.size, tt.want)
		}
		if tt.ioctl != 0 && tt.ioctl != ioc(tt.dir, 0xAA, tt.nr, tt.want) {
			t.Errorf("%s ioctl = %#x, want %#x", tt.name, tt.ioctl, ioc(tt.dir, 0xAA, tt.nr, tt.want))
		}
	}
	if off := unsafe.Offsetof(Msg{}.Address); off != 16 {
		t.Errorf("uffd_msg.arg.pagefault.address at %d, want 16", off)
	}
	if off := unsafe.Offsetof(Msg{}.ThreadID); off != 24 {
		t.Errorf("uffd_msg.arg.pagefault.feat.ptid at %d, want 24", off)
	}
	if iocNew != ioc(0, 0xAA, 0, 0) {
		t.Errorf("USERFAULTFD_IOC_NEW = %#x", iocNew)
	}
}

// mapPages maps n private anonymous pages.
func mapPages(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func addr(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

func open(t *testing.T, features uint64) *FD {
	t.Helper()
	u, err := New(unix.O_CLOEXEC)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { u.Close() })
	if _, err := u.API(features); err != nil {
		t.Fatalf("api: %v", err)
	}
	return u
}

// kernelRead makes the kernel read p (write(2) to a pipe), so that a fault
// on it blocks inside a system call and the calling goroutine gives up its
// P: these tests handle faults in the same process, which is safe only
// for faults taken inside system calls (see memtap's package comment).
// The pipe's contents are returned.
func kernelRead(p []byte) ([]byte, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if _, err := unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, 1<<20); err != nil {
		return nil, err
	}
	n, err := unix.Write(fds[1], p)
	if err != nil {
		return nil, err
	}
	out := make([]byte, n)
	_, err = unix.Read(fds[0], out)
	return out, err
}

// kernelWrite makes the kernel write src into dst (read(2) from a pipe).
func kernelWrite(dst, src []byte) error {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if _, err := unix.Write(fds[1], src); err != nil {
		return err
	}
	_, err := unix.Read(fds[0], dst)
	return err
}

func TestMissingFaults(t *testing.T) {
	page := bytes.Repeat([]byte{0xA5}, PageSize)
	tests := []struct {
		name string
		// resolve answers the fault at page address a of region r.
		resolve func(u *FD, a uintptr) error
		want    []byte
	}{
		{"copy", func(u *FD, a uintptr) error {
			_, _, err := u.Copy(a, addr(page), PageSize, 0)
			return err
		}, page},
		{"zeropage", func(u *FD, a uintptr) error {
			_, _, err := u.ZeroPage(a, PageSize, 0)
			return err
		}, make([]byte, PageSize)},
		{"copy dontwake then wake", func(u *FD, a uintptr) error {
			if _, _, err := u.Copy(a, addr(page), PageSize, DontWake); err != nil {
				return err
			}
			return u.Wake(a, PageSize)
		}, page},
		{"copy twice: second skips", func(u *FD, a uintptr) error {
			if _, _, err := u.Copy(a, addr(page), PageSize, DontWake); err != nil {
				return err
			}
			in, skipped, err := u.Copy(a, addr(make([]byte, PageSize)), PageSize, 0)
			if err == nil && (in != 0 || skipped != PageSize) {
				err = errors.New("second copy was not skipped")
			}
			return err // the skipping Copy woke the waiter
		}, page},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := open(t, 0)
			mem := mapPages(t, 4)
			ioctls, err := u.Register(addr(mem), uintptr(len(mem)), ModeMissing)
			if err != nil {
				t.Fatal(err)
			}
			if want := uint64(IoctlCopy | IoctlZeropage | IoctlWake); ioctls&want != want {
				t.Fatalf("register ioctls %#x lack %#x", ioctls, want)
			}
			target := mem[2*PageSize : 3*PageSize]
			done := make(chan error, 1)
			go func() {
				var msgs [1]Msg
				n, err := u.Read(msgs[:])
				if err == nil && (n != 1 || msgs[0].Event != EventPagefault || msgs[0].Flags&FlagWP != 0) {
					err = errors.New("unexpected message")
				}
				if err == nil && uintptr(msgs[0].Address) != addr(target) {
					err = errors.New("fault at the wrong address")
				}
				if err == nil {
					err = tt.resolve(u, uintptr(msgs[0].Address))
				}
				done <- err
			}()
			got, err := kernelRead(target)
			if err != nil {
				t.Fatalf("kernel read: %v", err)
			}
			if err := <-done; err != nil {
				t.Fatalf("handler: %v", err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("page reads %#x..., want %#x...", got[:4], tt.want[:4])
			}
		})
	}
}

func TestCopyRangeSkipsPresent(t *testing.T) {
	u := open(t, 0)
	mem := mapPages(t, 4)
	if _, err := u.Register(addr(mem), uintptr(len(mem)), ModeMissing); err != nil {
		t.Fatal(err)
	}
	if _, _, err := u.ZeroPage(addr(mem)+PageSize, PageSize, 0); err != nil {
		t.Fatal(err)
	}
	src := bytes.Repeat([]byte{7}, len(mem))
	in, skipped, err := u.Copy(addr(mem), addr(src), uintptr(len(mem)), 0)
	if err != nil || in != 3*PageSize || skipped != PageSize {
		t.Fatalf("copy over a present page: installed %d skipped %d err %v", in, skipped, err)
	}
	for i, want := range []byte{7, 0, 7, 7} {
		if mem[i*PageSize] != want {
			t.Errorf("page %d = %d, want %d", i, mem[i*PageSize], want)
		}
	}
	if err := u.Unregister(addr(mem), uintptr(len(mem))); err != nil {
		t.Fatal(err)
	}
}

func TestWriteProtect(t *testing.T) {
	u := open(t, FeatureWP)
	mem := mapPages(t, 4)
	for i := range mem {
		mem[i] = byte(i / PageSize)
	}
	if _, err := u.Register(addr(mem), uintptr(len(mem)), ModeWP); err != nil {
		t.Fatal(err)
	}
	if err := u.WriteProtect(addr(mem), uintptr(len(mem)), true, false); err != nil {
		t.Fatal(err)
	}
	// Copy-before-write: the handler saves the old page, then lifts the
	// protection, which wakes the writer.
	saved := make([]byte, PageSize)
	done := make(chan error, 1)
	go func() {
		var msgs [1]Msg
		_, err := u.Read(msgs[:])
		m := msgs[0]
		if err == nil && (m.Flags&FlagWP == 0 || m.Flags&FlagWrite == 0) {
			err = errors.New("not a write-protect fault")
		}
		if err == nil {
			a := uintptr(m.Address) &^ (PageSize - 1)
			copy(saved, mem[a-addr(mem):])
			err = u.WriteProtect(a, PageSize, false, false)
		}
		done <- err
	}()
	if err := kernelWrite(mem[PageSize:2*PageSize], bytes.Repeat([]byte{9}, PageSize)); err != nil {
		t.Fatalf("kernel write: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("handler: %v", err)
	}
	if !bytes.Equal(saved, bytes.Repeat([]byte{1}, PageSize)) {
		t.Errorf("saved page holds %d, want the pre-write 1", saved[0])
	}
	if mem[PageSize] != 9 || mem[0] != 0 {
		t.Errorf("after the write: pages hold %d %d, want 0 9", mem[0], mem[PageSize])
	}
	// Reads of protected pages never fault.
	if mem[3*PageSize] != 3 {
		t.Errorf("page 3 = %d, want 3", mem[3*PageSize])
	}
	if err := u.WriteProtect(addr(mem), uintptr(len(mem)), false, false); err != nil {
		t.Fatal(err)
	}
	mem[3*PageSize] = 5 // no handler now: must not block
}

func TestNonBlockingRead(t *testing.T) {
	u, err := New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.API(0); err != nil {
		t.Fatal(err)
	}
	var msgs [4]Msg
	if n, err := u.Read(msgs[:]); n != 0 || !errors.Is(err, unix.EAGAIN) {
		t.Errorf("read with nothing pending: %d, %v; want EAGAIN", n, err)
	}
}

func TestBadRange(t *testing.T) {
	u := open(t, 0)
	tests := []struct {
		name string
		err  error
	}{
		{"register unaligned", func() error { _, err := u.Register(1, PageSize, ModeMissing); return err }()},
		{"copy empty", func() error { _, _, err := u.Copy(PageSize, PageSize, 0, 0); return err }()},
		{"writeprotect odd length", u.WriteProtect(PageSize, 100, true, false)},
	}
	for _, tt := range tests {
		if tt.err == nil {
			t.Errorf("%s: no error", tt.name)
		}
	}
}
