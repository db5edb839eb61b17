//go:build kvm && stress

package tests

// Tests make test leaves out because they fail now and then for a reason
// still open; make stresstest runs them. In a one-vCPU sandbox a
// sixteen-clone fork failed 2 of 5 clean-clone runs on memtap's 5 s
// deadlines ("memory server ... no answer in 5s", "a read of the parent's
// memory has not returned in 5s") while the clone's helper was running.

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// The forktest kernel forks 16 clones; each checks the pre-fork pattern
// and that the memory the parent never touched reads as zero, while the
// parent overwrites the pattern.
func TestFork16Clones(t *testing.T) {
	const clones = 16
	p := forktest(t, fmt.Sprintf("mode=fork clones=%d size=16M", clones), "--fork-capacity", fmt.Sprint(clones))
	out, sum := forkDone(t, p, 4*time.Minute, 16<<20)
	for id := 1; id <= clones; id++ {
		for _, want := range []string{
			fmt.Sprintf("[clone %d] forktest: clone %d: pattern ok, checksum %s, untouched memory zero", id, id, sum),
			fmt.Sprintf("sfvmm clone %d: guest ended: sf_exit status 0", id),
		} {
			if !strings.Contains(out, want) {
				t.Errorf("missing %q", want)
			}
		}
	}
	if want := fmt.Sprintf("forktest: parent joined: all %d clones exited, 0 without sf_exit(0)", clones); !strings.Contains(out, want) {
		t.Errorf("missing %q", want)
	}
	if stats := parseCloneStats(t, out); len(stats) != clones {
		t.Errorf("memtap statistics of %d clones, want %d", len(stats), clones)
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}
