// Package helper runs memtap's fault handlers in a process of their own and
// talks to them: it re-executes the VMM binary in a helper role (selected
// by an environment variable that memtap.Main looks at first thing),
// connects the two over a Unix stream socket that carries gob messages and
// descriptors (SCM_RIGHTS), and shares a struct of counters between them.
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
	"net"
	"os"
	"os/exec"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// envRole names the environment variable that makes a process a helper:
// its value is the role ("client", "server").
const envRole = "SFVMM_MEMTAP_HELPER"

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

// maxMsg bounds a control message. The largest carry the runs of a
// region's populated pages, about 9 bytes a run in gob: a region populated
// in more than some seven million separate runs cannot be handed to a
// helper.
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
	cmd.Env = append(os.Environ(), envRole+"="+role)
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

// Main runs body and exits, when this process was started as a helper in
// role; otherwise it returns at once. body's error is printed and makes
// the exit status 1.
func Main(role string, body func() error) {
	if os.Getenv(envRole) != role {
		return
	}
	if err := body(); err != nil {
		fmt.Fprintf(os.Stderr, "memtap %s helper: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

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

// Counters is a T, a struct of atomic counters, in memory shared between
// the VMM and a helper: the helper updates it (MapCounters), the VMM reads
// it, and after Close the VMM reads a copy of the last figures.
type Counters[T any] struct {
	mu  sync.RWMutex // held for reading while t is read, for writing by Close
	mem []byte       // the shared memory, nil after Close; guarded by mu
	t   *T           // in mem, or the copy; guarded by mu
}

// NewCounters shares a zero T with a helper: it returns the counters and
// the file of their memory (a memfd), which the helper is passed and maps
// with MapCounters.
func NewCounters[T any]() (*Counters[T], *os.File, error) {
	fd, err := unix.MemfdCreate("memtap-stats", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("shared counters: memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memtap-stats")
	if err := unix.Ftruncate(fd, int64(unsafe.Sizeof(*new(T)))); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("shared counters: %w", err)
	}
	mem, t, err := mapCounters[T](fd)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return &Counters[T]{mem: mem, t: t}, f, nil
}

// MapCounters maps, in a helper, the T that NewCounters shared as the
// memfd fd. The mapping lasts as long as the helper.
func MapCounters[T any](fd int) (*T, error) {
	_, t, err := mapCounters[T](fd)
	return t, err
}

func mapCounters[T any](fd int) ([]byte, *T, error) {
	mem, err := unix.Mmap(fd, 0, int(unsafe.Sizeof(*new(T))), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("shared counters: mmap: %w", err)
	}
	return mem, (*T)(unsafe.Pointer(&mem[0])), nil
}

// Read calls fn with the counters, which it must read atomically (the
// helper may be updating them) and not keep: Close unmaps them.
func (c *Counters[T]) Read(fn func(*T)) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	fn(c.t)
}

// Close copies the counters' last figures, for Read, and unmaps the shared
// memory. Call it once the helper has exited, so that nothing writes them
// during the copy.
func (c *Counters[T]) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mem == nil {
		return
	}
	last := new(T)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(last)), len(c.mem)), c.mem)
	c.t = last
	unix.Munmap(c.mem)
	c.mem = nil
}
