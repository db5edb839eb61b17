package vmm

import (
	"runtime"
	"testing"
)

func TestAsyncPreemptOff(t *testing.T) {
	for _, c := range []struct {
		godebug string
		off     bool
	}{
		{"", false},
		{"asyncpreemptoff=1", true},
		{"gctrace=1,asyncpreemptoff=1", true},
		{"asyncpreemptoff=1,asyncpreemptoff=0", false},
		{"asyncpreemptoff=0", false},
		{"xasyncpreemptoff=1", false},
		{"asyncpreemptoff=2", true},
		{"asyncpreemptoff=1,asyncpreemptoff=x", true}, // not a number: ignored
		{"gccheckmark=1", true},
		{"gccheckmark=1,asyncpreemptoff=0", true},
	} {
		if got := asyncPreemptOff(c.godebug); got != c.off {
			t.Errorf("asyncPreemptOff(%q) = %v, want %v", c.godebug, got, c.off)
		}
	}
}

// Machines in one process add their vCPUs' Ps on top of the same base,
// and GOMAXPROCS is the base again once the last has ended.
func TestHoldProcs(t *testing.T) {
	base := runtime.GOMAXPROCS(0)
	holdProcs(2)
	holdProcs(1)
	if got := runtime.GOMAXPROCS(0); got != base+3 {
		t.Errorf("two machines of 2 and 1 vCPUs: GOMAXPROCS %d, want %d", got, base+3)
	}
	releaseProcs(2)
	releaseProcs(1)
	if got := runtime.GOMAXPROCS(0); got != base {
		t.Errorf("after both: GOMAXPROCS %d, want %d", got, base)
	}
}
