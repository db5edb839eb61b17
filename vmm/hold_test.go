package vmm

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Holds nest: the machine runs again only when the last is released, and
// a user's pause taken during another hold (a fork's, a snapshot's)
// outlasts it.
func TestHoldsNest(t *testing.T) {
	m := newVM(Config{})
	m.started = time.Now()
	ctx := context.Background()
	fork, err := m.Hold(ctx, "fork")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	fork.Release()
	fork.Release() // a second release does nothing
	if got := m.RunState(); got != "paused" {
		t.Errorf("after the fork's release with the user's pause in force: %s, want paused", got)
	}
	if err := m.Pause(ctx); err != nil || m.holds != 1 {
		t.Errorf("pause when paused: %v, %d holds; want no new hold", err, m.holds)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if got := m.RunState(); got != "running" {
		t.Errorf("after resume: %s, want running", got)
	}
	if _, err := m.SaveState(); !errors.Is(err, ErrNotHeld) {
		t.Errorf("save state with no hold: %v, want ErrNotHeld", err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Errorf("resume when running: %v", err)
	}
}

// A hold whose vCPUs do not stop fails by its deadline with an error that
// says so, and leaves no hold behind.
func TestHoldDeadline(t *testing.T) {
	m := newVM(Config{})
	m.running = 1 // a vCPU that never parks
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := m.Hold(ctx, "snapshot")
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hold with a stuck vCPU: %v", err)
	}
	if want := "snapshot: 1 of 1 vCPUs did not stop"; len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
		t.Errorf("error %q, want it to start %q", err, want)
	}
	if m.holds != 0 {
		t.Errorf("%d holds left after the failure", m.holds)
	}
}
