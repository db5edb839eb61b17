//go:build kvm

package tests

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/vmm/api"
)

// forkRounds starts forktest forking rounds times, two clones each, with
// the control API on a socket, and returns the process and an API client.
func forkRounds(t *testing.T, rounds int) (*proc, *api.Client) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	p := forktest(t, fmt.Sprintf("mode=rounds rounds=%d clones=2 size=4M", rounds), "--api-sock", sock)
	c := api.Dial(sock)
	t.Cleanup(c.Close)
	return p, c
}

// checkRounds checks that every round's clones found their round's pattern
// (their registers and memory are of the same instant) and that the parent
// saw every round through.
func checkRounds(t *testing.T, out string, rounds int) {
	t.Helper()
	for r := 1; r <= rounds; r++ {
		for id := 1; id <= 2; id++ {
			if want := fmt.Sprintf("forktest: round %d: clone %d: pattern ok", r, id); !strings.Contains(out, want) {
				t.Errorf("missing %q", want)
			}
		}
		if want := fmt.Sprintf("forktest: round %d ok", r); !printed(out, want) {
			t.Errorf("missing %q", want)
		}
	}
}

// An API snapshot taken while the guest forks: it waits for the fork's
// hold instead of resuming the guest between the fork's state capture and
// the sealing of its memory image, so every clone's registers and memory
// agree, and the snapshot itself restores to a guest that finishes its
// rounds.
func TestSnapshotWhileGuestForks(t *testing.T) {
	const rounds = 4
	p, c := forkRounds(t, rounds)
	dir := filepath.Join(t.TempDir(), "snap")
	for r := 1; r <= rounds; r++ {
		p.waitFor(t, fmt.Sprintf("forktest: round %d: forking", r), 2*time.Minute)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := c.Snapshot(ctx, api.SnapshotRequest{Dir: dir, Overwrite: true})
		cancel()
		if err != nil {
			t.Fatalf("snapshot in round %d: %v", r, err)
		}
	}
	if code := p.wait(t, 2*time.Minute); code != 1 {
		t.Fatalf("exit status %d, want 1 (debug-exit 0)\n%s", code, p.Output())
	}
	checkRounds(t, p.Output(), rounds)
	if t.Failed() {
		t.Logf("output:\n%s", p.Output())
	}
}

// A user's pause through the API, taken as the guest forks, holds until
// the user resumes: the fork completes and its clones run and end, but the
// parent does not go on until the resume.
func TestPauseHeldAcrossGuestFork(t *testing.T) {
	const rounds = 3
	p, c := forkRounds(t, rounds)
	ctx := context.Background()
	overlapped := 0
	for r := 1; r <= rounds; r++ {
		p.waitFor(t, fmt.Sprintf("forktest: round %d: forking", r), 2*time.Minute)
		if err := c.Pause(ctx); err != nil {
			t.Fatalf("pause in round %d: %v", r, err)
		}
		// The guest has usually reached sf_clone by the time its line
		// is read here, and the fork goes on under the user's pause; if
		// the pause came first, there are no clones to wait for.
		clonesRan := true
		for id := 1; id <= 2; id++ {
			if !p.waitBriefly(fmt.Sprintf("forktest: round %d: clone %d: pattern ok", r, id), time.Minute) {
				clonesRan = false
			}
		}
		st, err := c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != api.StatePaused || printed(p.Output(), fmt.Sprintf("forktest: round %d ok", r)) {
			t.Fatalf("round %d: state %q after the fork: the guest ran on while the user held it paused\n%s", r, st.State, p.Output())
		}
		if clonesRan {
			overlapped++
		}
		if err := c.Resume(ctx); err != nil {
			t.Fatalf("resume in round %d: %v", r, err)
		}
		p.waitFor(t, fmt.Sprintf("forktest: round %d ok", r), 2*time.Minute)
	}
	if code := p.wait(t, time.Minute); code != 1 {
		t.Fatalf("exit status %d, want 1 (debug-exit 0)\n%s", code, p.Output())
	}
	if overlapped == 0 {
		t.Errorf("no pause of %d came during a fork", rounds)
	}
	checkRounds(t, p.Output(), rounds)
	if t.Failed() {
		t.Logf("output:\n%s", p.Output())
	}
}
