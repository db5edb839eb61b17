// Package helper runs memtap's fault handlers in a process of their own and
// talks to them: it re-executes the VMM binary in a helper role (selected
// by an environment variable that memtap.Main looks at first thing),
// connects the two over a Unix stream socket that carries gob messages and
// descriptors (SCM_RIGHTS), and shares a page of counters between them.
//
// Why a process: see the package comment of memtap. It is internal to
// memtap and memtap/server.
package helper

import (
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"os/exec"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// EnvRole names the environment variable that makes a process a helper:
// its value is the role ("client", "server").
const EnvRole = "SFVMM_MEMTAP_HELPER"

// First descriptors a helper inherits.
const (
	fdCtl   = 3
	fdFirst = 4 // the files passed to Spawn, in order
)

// Conn is one end of the control socket. Send may be called from several
// goroutines; Recv from one at a time.
type Conn struct {
	c   *net.UnixConn
	wmu sync.Mutex // serialises Send
}

// maxMsg bounds a control message (a bitmap of 1 TiB of RAM is 32 MiB; run
// lists are far smaller in practice).
const maxMsg = 64 << 20

// Send gob-encodes v and sends it with the descriptors fds attached.
func (c *Conn) Send(v any, fds ...int) error {
	var buf writeBuf
	buf.b = make([]byte, 4, 256)
	if err := gob.NewEncoder(&buf).Encode(v); err != nil {
		return fmt.Errorf("encode control message: %w", err)
	}
	binary.LittleEndian.PutUint32(buf.b, uint32(len(buf.b)-4))
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	// The descriptors travel with the first byte; the rest follows.
	n, _, err := c.c.WriteMsgUnix(buf.b, oob, nil)
	if err == nil && n < len(buf.b) {
		_, err = c.c.Write(buf.b[n:])
	}
	if err != nil {
		return fmt.Errorf("send control message: %w", err)
	}
	return nil
}

type writeBuf struct{ b []byte }

func (w *writeBuf) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

// Recv receives one message into v and returns the descriptors that came
// with it. At the end of the stream it returns io.EOF.
func (c *Conn) Recv(v any) ([]int, error) {
	var hdr [4]byte
	oob := make([]byte, unix.CmsgSpace(4*8))
	n, oobn, _, _, err := c.c.ReadMsgUnix(hdr[:], oob)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, io.EOF
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, fmt.Errorf("receive control message: %w", err)
		}
		for _, m := range msgs {
			got, err := unix.ParseUnixRights(&m)
			if err != nil {
				return nil, fmt.Errorf("receive control message: %w", err)
			}
			fds = append(fds, got...)
		}
	}
	if _, err := io.ReadFull(c.c, hdr[n:]); err != nil {
		return fds, fmt.Errorf("receive control message: %w", err)
	}
	size := binary.LittleEndian.Uint32(hdr[:])
	if size > maxMsg {
		return fds, fmt.Errorf("receive control message: %d bytes", size)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(c.c, body); err != nil {
		return fds, fmt.Errorf("receive control message: %w", err)
	}
	if err := gob.NewDecoder(bytesReader(body)).Decode(v); err != nil {
		return fds, fmt.Errorf("decode control message: %w", err)
	}
	return fds, nil
}

type byteReader struct{ b []byte }

func bytesReader(b []byte) *byteReader { return &byteReader{b} }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// Close closes the socket; the peer reads EOF.
func (c *Conn) Close() error { return c.c.Close() }

// Proc is a running helper process, seen from the VMM.
type Proc struct {
	Ctl    *Conn
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has been waited for
	err    error         // the wait status; read after exited
}

// PID is the helper's process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Spawn starts path (the VMM binary; os.Executable when empty) as a helper
// in role, passing it files as descriptors 4, 5, ... after the control
// socket on 3. The helper leaves by itself when the control socket closes,
// as it does when the VMM exits or dies.
func Spawn(path, role string, files ...*os.File) (*Proc, error) {
	if path == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("spawn memtap helper: %w", err)
		}
		path = exe
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("spawn memtap helper: socketpair: %w", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "memtap-ctl")
	theirs := os.NewFile(uintptr(fds[1]), "memtap-ctl")
	defer theirs.Close()
	fc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return nil, fmt.Errorf("spawn memtap helper: %w", err)
	}
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), EnvRole+"="+role)
	cmd.ExtraFiles = append([]*os.File{theirs}, files...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// No PR_SET_PDEATHSIG: it fires when the forking *thread* exits, and
	// Go ends threads under goroutines that exit while locked to them
	// (the VMM's vCPU threads, for one). The helper leaves when the
	// control socket reads EOF, which the VMM's death causes too.
	if err := cmd.Start(); err != nil {
		fc.Close()
		return nil, fmt.Errorf("spawn memtap helper %s: %w", path, err)
	}
	p := &Proc{Ctl: &Conn{c: fc.(*net.UnixConn)}, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	// The helper reads this process's memory (process_vm_readv); under
	// Yama's ptrace_scope 1 a child may do so only when named here. Without
	// Yama the call fails with EINVAL, and nothing is needed.
	_ = unix.Prctl(unix.PR_SET_PTRACER, uintptr(cmd.Process.Pid), 0, 0, 0)
	return p, nil
}

// Pid is the helper's process ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited is closed when the helper has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// ExitErr is the helper's exit status (nil for a clean exit); valid after
// Exited is closed.
func (p *Proc) ExitErr() error { return p.err }

// Stop closes the control socket, which tells the helper to leave, and waits
// up to grace for it; then it kills it.
func (p *Proc) Stop(grace time.Duration) error {
	p.Ctl.Close()
	select {
	case <-p.exited:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.exited
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) && !ee.Exited() {
		return nil // killed: what Stop asked for
	}
	return p.err
}

// Role returns the helper role this process was started in, or "".
func Role() string { return os.Getenv(EnvRole) }

// Attach returns, in a helper process, the control socket and the
// descriptors of the files Spawn passed (n of them). They are raw numbers,
// not *os.File, so that no finalizer closes them behind the caller's back.
func Attach(n int) (*Conn, []int, error) {
	f := os.NewFile(fdCtl, "memtap-ctl")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("memtap helper: control socket: %w", err)
	}
	fds := make([]int, n)
	for i := range fds {
		fds[i] = fdFirst + i
		unix.CloseOnExec(fds[i])
	}
	return &Conn{c: fc.(*net.UnixConn)}, fds, nil
}

// Shared maps size bytes of memory shared between the VMM and a helper: a
// memfd, whose file is passed to the helper.
func Shared(size int) ([]byte, *os.File, error) {
	fd, err := unix.MemfdCreate("memtap-stats", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("shared counters: memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memtap-stats")
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("shared counters: %w", err)
	}
	mem, err := MapShared(fd, size)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return mem, f, nil
}

// MapShared maps the shared memory of the memfd fd.
func MapShared(fd int, size int) ([]byte, error) {
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("shared counters: mmap: %w", err)
	}
	return mem, nil
}

// Bitmap is a set of pages, built from runs.
type Bitmap struct {
	n     uint64
	words []uint64
}

// Run is a run of pages [Start, Start+N).
type Run struct{ Start, N uint64 }

// NewBitmap returns the set of n pages holding runs; nil runs with all
// true means every page. It refuses runs outside [0, n).
func NewBitmap(n uint64, runs []Run, all bool) (*Bitmap, error) {
	b := &Bitmap{n: n, words: make([]uint64, (n+63)/64)}
	if all {
		runs = []Run{{0, n}}
	}
	for _, r := range runs {
		if r.Start >= n || r.N > n-r.Start {
			return nil, fmt.Errorf("pages [%d, +%d) outside [0, %d)", r.Start, r.N, n)
		}
		for i := r.Start; i < r.Start+r.N; {
			if i%64 == 0 && r.Start+r.N-i >= 64 {
				b.words[i/64] = ^uint64(0)
				i += 64
				continue
			}
			b.words[i/64] |= 1 << (i % 64)
			i++
		}
	}
	return b, nil
}

// Get reports whether page i is in the set; pages past the end are not.
func (b *Bitmap) Get(i uint64) bool {
	return i < b.n && b.words[i/64]&(1<<(i%64)) != 0
}

// Len is the number of pages covered.
func (b *Bitmap) Len() uint64 { return b.n }

// Set adds page i (which must be below Len) to the set.
func (b *Bitmap) Set(i uint64) { b.words[i/64] |= 1 << (i % 64) }

// Runs calls fn for each run of pages in a ∪ (b ∖ c), in order; the
// three cover the same pages.
func Runs(a, b, c *Bitmap, fn func(start, n uint64)) {
	var start, n uint64
	flush := func() {
		if n > 0 {
			fn(start, n)
			n = 0
		}
	}
	for w := range a.words {
		word := a.words[w] | b.words[w]&^c.words[w]
		base := uint64(w) * 64
		switch word {
		case 0:
			flush()
			continue
		case ^uint64(0):
			if n > 0 && start+n == base {
				n += 64
			} else {
				flush()
				start, n = base, 64
			}
			continue
		}
		for word != 0 {
			i := base + uint64(bits.TrailingZeros64(word))
			if n > 0 && start+n == i {
				n++
			} else {
				flush()
				start, n = i, 1
			}
			word &= word - 1
		}
		if start+n != base+64 {
			flush() // the run stops inside this word
		}
	}
	flush()
}
