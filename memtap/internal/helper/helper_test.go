package helper

import (
	"net"
	"os"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

func TestControlMessages(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *Conn {
		f := os.NewFile(uintptr(fd), "ctl")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return &Conn{c: c.(*net.UnixConn)}
	}
	a, b := conn(fds[0]), conn(fds[1])
	defer a.Close()
	defer b.Close()

	type msg struct {
		Op   string
		Runs []uint64
	}
	c, f, err := NewCounters[counters]()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer f.Close()
	c.Read(func(c *counters) { c.a.Store(42) })
	big := make([]uint64, 200000) // more than a socket buffer holds
	go func() {
		a.Send(msg{Op: "first", Runs: big}, int(f.Fd()))
		a.Send(msg{Op: "second"})
		a.Close()
	}()
	var m msg
	got, err := b.Recv(&m)
	if err != nil || m.Op != "first" || len(m.Runs) != len(big) || len(got) != 1 {
		t.Fatalf("first message: %q, %d runs, fds %v, %v", m.Op, len(m.Runs), got, err)
	}
	// The descriptor is the shared memory: the helper sees what the VMM wrote.
	peer, err := MapCounters[counters](got[0])
	unix.Close(got[0])
	if err != nil {
		t.Fatal(err)
	}
	if n := peer.a.Load(); n != 42 {
		t.Errorf("shared counter reads %d, want 42", n)
	}
	if got, err := b.Recv(&m); err != nil || m.Op != "second" || len(got) != 0 {
		t.Errorf("second message: %q, fds %v, %v", m.Op, got, err)
	}
	if _, err := b.Recv(&m); err == nil {
		t.Error("no error at the end of the stream")
	}
}

type counters struct{ a, b atomic.Uint64 }

// The VMM reads what the helper writes, and after Close the last figures,
// from a copy: the helper's writes no longer reach it.
func TestCounters(t *testing.T) {
	c, f, err := NewCounters[counters]()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	helper, err := MapCounters[counters](int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	read := func() (a, b uint64) {
		c.Read(func(c *counters) { a, b = c.a.Load(), c.b.Load() })
		return a, b
	}
	helper.a.Add(3)
	helper.b.Add(5)
	if a, b := read(); a != 3 || b != 5 {
		t.Errorf("the VMM reads %d, %d; the helper wrote 3, 5", a, b)
	}
	c.Close()
	helper.a.Add(1)
	if a, b := read(); a != 3 || b != 5 {
		t.Errorf("after Close the VMM reads %d, %d; want the last figures 3, 5", a, b)
	}
	c.Close()
}
