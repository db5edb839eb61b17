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
