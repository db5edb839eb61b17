package memtap

import (
	"strings"
	"testing"
	"time"
)

// A direct read of the parent's memory that does not return within the
// timeout ends the helper's service with an error naming it; one that
// returns, or none, does not.
func TestWatchDirect(t *testing.T) {
	h := &handler{cfg: helperConfig{Timeout: 200 * time.Millisecond}}
	done := make(chan error, 1)
	go h.watchDirect(done)
	h.readingSince.Store(time.Now().UnixNano())
	h.readingSince.Store(0) // a read that returned at once
	select {
	case err := <-done:
		t.Fatalf("error with no read in progress: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	start := time.Now()
	h.readingSince.Store(start.UnixNano())
	select {
	case err := <-done:
		if took := time.Since(start); took < 200*time.Millisecond || !strings.Contains(err.Error(), "has not returned") {
			t.Fatalf("after %v: %v", took, err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no error for a read blocked past the timeout")
	}
}

// Time in which the process did not run is not held against the server:
// a wait that ends more than the slack late is late by all of it.
func TestLateBy(t *testing.T) {
	start := time.Unix(1000, 0)
	const asked, slack = 500 * time.Millisecond, 500 * time.Millisecond
	for _, tc := range []struct {
		after, want time.Duration
	}{
		{100 * time.Millisecond, 0}, // woken early by an event
		{asked, 0},
		{asked + slack, 0},
		{asked + slack + time.Millisecond, slack + time.Millisecond},
		{7 * time.Second, 7*time.Second - asked}, // the machine stood still
	} {
		if got := lateBy(start, asked, slack, start.Add(tc.after)); got != tc.want {
			t.Errorf("ended %v after start: late by %v, want %v", tc.after, got, tc.want)
		}
	}
}

// Deadlines move on by the time excused; a handler that has heard nothing
// yet keeps no progress time.
func TestExcuse(t *testing.T) {
	t0 := time.Unix(1000, 0)
	h := &handler{queue: []inflight{{sent: t0}, {sent: t0.Add(time.Second)}}}
	h.excuse(3 * time.Second)
	if !h.queue[0].sent.Equal(t0.Add(3*time.Second)) || !h.queue[1].sent.Equal(t0.Add(4*time.Second)) || !h.progress.IsZero() {
		t.Errorf("after excusing 3 s: sent %v, %v, progress %v", h.queue[0].sent, h.queue[1].sent, h.progress)
	}
	h.progress = t0
	h.excuse(time.Second)
	if !h.progress.Equal(t0.Add(time.Second)) {
		t.Errorf("progress %v, want %v", h.progress, t0.Add(time.Second))
	}
}
