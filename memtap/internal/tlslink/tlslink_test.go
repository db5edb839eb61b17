package tlslink

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair returns a client and a server Conn on the two ends of a socket
// pair, their handshake done. The test's goroutines that use them go in
// wg: at the end the pair is shut down, which ends their system calls,
// and closed only once they are done, so that none of them reads or
// writes a later test's socket that got the same descriptor number.
func pair(t *testing.T, key [32]byte, wg *sync.WaitGroup) (*Conn, *Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Shutdown(fds[0], unix.SHUT_RDWR)
		unix.Shutdown(fds[1], unix.SHUT_RDWR)
		wg.Wait()
		unix.Close(fds[0])
		unix.Close(fds[1])
	})
	ccfg, err := Config(key, false)
	if err != nil {
		t.Fatal(err)
	}
	scfg, _ := Config(key, true)
	c, s := Client(fds[0], nil, nil, ccfg), Server(fds[1], nil, nil, scfg)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	s.SetDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 1)
	wg.Go(func() { errc <- s.Handshake() })
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Time{})
	s.SetDeadline(time.Time{})
	return c, s
}

func pollFd(t *testing.T, c *Conn, events int16) {
	t.Helper()
	p := []unix.PollFd{{Fd: int32(c.raw.fd), Events: events}}
	for {
		n, err := unix.Poll(p, 10000)
		if errors.Is(err, unix.EINTR) {
			continue // Go's own signals
		}
		if n != 1 || err != nil {
			t.Fatalf("poll: %d, %v", n, err)
		}
		return
	}
}

// A non-blocking client reads whole records as they come, says EAGAIN in
// between, and never blocks on a write: what the socket does not take
// waits for Flush.
func TestNonblockingConn(t *testing.T) {
	var wg sync.WaitGroup
	c, s := pair(t, [32]byte{1}, &wg)
	if err := c.SetNonblock(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	if _, err := c.Read(buf); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("read with nothing sent: %v, want EAGAIN", err)
	}
	want := bytes.Repeat([]byte("page"), 100<<10)
	wg.Go(func() { s.Write(want) })
	var got []byte
	for len(got) < len(want) {
		n, err := c.Read(buf)
		if errors.Is(err, unix.EAGAIN) {
			pollFd(t, c, unix.POLLIN)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the client read other bytes than the server sent")
	}

	// 16 MiB: more than the socket pair holds while the server reads
	// nothing.
	big := bytes.Repeat([]byte{7, 8, 9}, 16<<20/3)
	start := time.Now()
	if n, err := c.Write(big); n != len(big) || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("a non-blocking write took %v", time.Since(start))
	}
	if !c.Pending() {
		t.Fatal("nothing pending after 16 MiB written to a socket pair nobody reads")
	}
	done := make(chan []byte, 1)
	wg.Go(func() {
		b := make([]byte, len(big))
		io.ReadFull(s, b)
		done <- b
	})
	for c.Pending() {
		if err := c.Flush(); err != nil && !errors.Is(err, unix.EAGAIN) {
			t.Fatal(err)
		}
		if c.Pending() {
			pollFd(t, c, unix.POLLOUT)
		}
	}
	if !bytes.Equal(<-done, big) {
		t.Fatal("the server read other bytes than the client wrote")
	}
}

// On a blocking descriptor a deadline is the socket's timeout: a read
// past it fails with os.ErrDeadlineExceeded, and the stream still works.
func TestBlockingDeadline(t *testing.T) {
	var wg sync.WaitGroup
	c, s := pair(t, [32]byte{2}, &wg)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the deadline took %v", d)
	}
	c.SetReadDeadline(time.Time{})
	wg.Go(func() { s.Write([]byte("after")) })
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "after" {
		t.Fatalf("read after a deadline: %q, %v", b, err)
	}
}

// A peer that holds another family's key is refused by both ends.
func TestOtherFamilyRefused(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	ccfg, _ := Config([32]byte{3}, false)
	scfg, _ := Config([32]byte{4}, true)
	c, s := Client(fds[0], nil, nil, ccfg), Server(fds[1], nil, nil, scfg)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	s.SetDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 1)
	go func() { errc <- s.Handshake() }()
	if err := c.Handshake(); err == nil {
		t.Error("a client of one family completed a handshake with a server of another")
	}
	unix.Shutdown(fds[0], unix.SHUT_RDWR)
	if err := <-errc; err == nil {
		t.Error("a server of one family completed a handshake with a client of another")
	}
}
