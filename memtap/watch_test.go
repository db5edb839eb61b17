package memtap

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// thread runs fn on a thread of its own and returns the thread's ID.
func thread(fn func()) int {
	tid := make(chan int)
	go func() {
		runtime.LockOSThread()
		tid <- unix.Gettid()
		fn()
	}()
	return <-tid
}

// A direct read whose thread stays blocked past the timeout ends the
// helper's service with an error naming it; a read that returns, none at
// all, or one whose thread is runnable (slow on a busy host, not stuck)
// does not.
func TestWatchDirect(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	defer unix.Close(p[0])
	blockedTID := thread(func() { unix.Read(p[0], make([]byte, 1)) })
	spin := make(chan struct{})
	defer close(spin)
	spinningTID := thread(func() {
		for {
			select {
			case <-spin:
				return
			default:
			}
		}
	})

	h := &handler{cfg: helperConfig{Timeout: 200 * time.Millisecond}}
	done := make(chan error, 1)
	go h.watchDirect(done)
	expectNone := func(what string) {
		t.Helper()
		select {
		case err := <-done:
			t.Fatalf("%s: %v", what, err)
		case <-time.After(600 * time.Millisecond):
		}
	}
	h.tid.Store(int32(blockedTID))
	h.readingSince.Store(time.Now().UnixNano())
	h.readingSince.Store(0) // a read that returned at once
	expectNone("no read in progress")

	h.tid.Store(int32(spinningTID))
	h.readingSince.Store(time.Now().UnixNano())
	expectNone("a runnable reader")

	h.tid.Store(int32(blockedTID))
	start := time.Now()
	h.readingSince.Store(start.UnixNano())
	// The watchdog counts ticks of a tenth of the timeout, which a ticker
	// may deliver a little early.
	select {
	case err := <-done:
		if took := time.Since(start); took < 150*time.Millisecond || !strings.Contains(err.Error(), "has been blocked") {
			t.Fatalf("after %v: %v", took, err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no error for a read blocked past the timeout")
	}
}

// Keep-alives that say requests are being answered keep a connection up;
// ones that say nothing moves fail it after StuckAfter.
func TestStuckServer(t *testing.T) {
	h := &handler{cfg: helperConfig{StuckAfter: 3 * time.Second}, addr: "test"}
	h.queue = []inflight{{}}
	for i := uint64(0); i < 10; i++ {
		if err := h.alive(i); err != nil {
			t.Fatalf("keep-alive %d with progress: %v", i, err)
		}
	}
	h.queue = nil
	for range 5 {
		if err := h.alive(9); err != nil {
			t.Fatalf("keep-alive with nothing waiting: %v", err)
		}
	}
	h.queue = []inflight{{}}
	var err error
	n := 0
	for ; err == nil && n < 10; n++ {
		err = h.alive(9)
	}
	if err == nil || n != 3 || !strings.Contains(err.Error(), "alive but has answered nothing in 3s") {
		t.Errorf("after %d keep-alives without progress: %v", n, err)
	}
}

// A wait that ends far later than asked means the process (or its whole
// machine) stood still; an early or punctual one does not.
func TestStoodStill(t *testing.T) {
	start := time.Unix(1000, 0)
	const asked = 500 * time.Millisecond
	for _, tc := range []struct {
		after time.Duration
		want  bool
	}{
		{100 * time.Millisecond, false}, // woken early by an event
		{asked, false},
		{2 * asked, false},
		{3 * time.Second, true},
	} {
		if got := stoodStill(start, asked, start.Add(tc.after)); got != tc.want {
			t.Errorf("after %v: %v, want %v", tc.after, got, tc.want)
		}
	}
}
