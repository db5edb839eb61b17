//go:build kvm

package tests

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/memtap/server"
	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/fork"
	"github.com/sfvmm/sfvmm/vmm/vmtest"
)

// lockedBuffer collects the parent's console and its clones' output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// cloneLauncher starts clones as `sfvmm clone` processes of this test.
type cloneLauncher struct {
	bin string
	out *lockedBuffer
}

type cloneCmd struct{ *exec.Cmd }

func (c cloneCmd) Kill() error { return c.Process.Kill() }

func (l cloneLauncher) Launch(descriptor string, ticket, id uint32) (fork.Clone, error) {
	cmd := exec.Command(l.bin, "clone", "--descriptor", descriptor,
		"--ticket", strconv.FormatUint(uint64(ticket), 10), "--id", strconv.FormatUint(uint64(id), 10))
	cmd.Stdout, cmd.Stderr = l.out, l.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cloneCmd{cmd}, nil
}

// sealHook is memtap's memory server with a hook run at Seal, that is
// inside the fork's hold, after the parent's state was saved and before
// its memory image is sealed: where a pause or snapshot that resumed the
// guest would let the clones' registers and memory disagree.
type sealHook struct {
	*server.Server
	onSeal func()
}

type sealImage struct {
	*server.Image
	onSeal func()
}

func (s sealHook) Arm(regions []server.Region) (fork.Image, error) {
	im, err := s.Server.Arm(regions)
	if err != nil {
		return nil, err
	}
	return sealImage{im, s.onSeal}, nil
}

func (im sealImage) Seal(regions []server.Region) error {
	im.onSeal()
	return im.Image.Seal(regions)
}

// forkRig runs forktest's rounds (two clones each) in a machine of this
// process, calling onSeal inside every fork's hold.
type forkRig struct {
	vm   *vmm.VM
	out  *lockedBuffer
	exit vmm.Exit      // how the guest ended, set before done is closed
	done chan struct{} // closed when Run returns
}

func newForkRig(t *testing.T, rounds int, onSeal func(vm *vmm.VM)) *forkRig {
	t.Helper()
	bin := sfvmmPath(t)
	r := &forkRig{out: &lockedBuffer{}, done: make(chan struct{})}
	fk := fork.New(fork.Config{Capacity: 4, Launcher: cloneLauncher{bin: bin, out: r.out}, Log: vmtest.Log(t),
		NewServer: func() (fork.Server, error) {
			// sfvmm is the helper binary: this test's does not serve
			// as one.
			s, err := server.New(server.Config{HelperPath: bin})
			if err != nil {
				return nil, err
			}
			return sealHook{s, func() { onSeal(r.vm) }}, nil
		}})
	vm, err := vmm.New(vmm.Config{
		KernelPath: vmtest.Kernel(t, "forktest"), Cmdline: fmt.Sprintf("mode=rounds rounds=%d clones=2 size=4M", rounds),
		CPUs: 1, MemBytes: 128 << 20, Console: r.out, Log: vmtest.Log(t), Fork: fk.Device,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.vm = vm
	go func() {
		r.exit, _ = vm.Run(context.Background())
		close(r.done)
	}()
	t.Cleanup(func() {
		vm.Stop()
		<-r.done
		fk.Close()
		vm.Close()
	})
	return r
}

// waitFor waits for want in the output, failing the test after timeout.
func (r *forkRig) waitFor(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(r.out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q within %v:\n%s", want, timeout, r.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// end waits for the guest to end and checks it ended well.
func (r *forkRig) end(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
		if r.exit.Reason != vmm.ExitDebug || r.exit.Code != 1 {
			t.Fatalf("guest ended %v, want debug-exit code 1:\n%s", r.exit, r.out.String())
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("guest still running:\n%s", r.out.String())
	}
}

// checkRounds checks that every round's clones found their round's
// pattern (their registers and memory are of the same instant) and that
// the parent saw every round through.
func checkRounds(t *testing.T, out string, rounds int) {
	t.Helper()
	for r := 1; r <= rounds; r++ {
		for id := 1; id <= 2; id++ {
			if want := fmt.Sprintf("forktest: round %d: clone %d: pattern ok", r, id); !strings.Contains(out, want) {
				t.Errorf("missing %q", want)
			}
		}
		if want := fmt.Sprintf("forktest: round %d ok", r); !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

// A user's pause taken while a guest fork holds the machine (as the
// control API's PUT /pause does) outlasts the fork: the fork completes and
// its clones run and end, but the parent stays paused until the user
// resumes it.
func TestPauseHeldAcrossGuestFork(t *testing.T) {
	const rounds = 2
	pauses := make(chan error, rounds)
	r := newForkRig(t, rounds, func(vm *vmm.VM) { pauses <- vm.Pause(context.Background()) })
	for round := 1; round <= rounds; round++ {
		for id := 1; id <= 2; id++ {
			r.waitFor(t, fmt.Sprintf("forktest: round %d: clone %d: pattern ok", round, id), 2*time.Minute)
		}
		if err := <-pauses; err != nil {
			t.Fatalf("round %d: pause: %v", round, err)
		}
		time.Sleep(time.Second) // time for a parent wrongly running to show it
		if st := r.vm.RunState(); st != "paused" || strings.Contains(r.out.String(), fmt.Sprintf("forktest: round %d ok", round)) {
			t.Fatalf("round %d: state %s after the fork: the parent ran on under the user's pause:\n%s", round, st, r.out.String())
		}
		if err := r.vm.Resume(context.Background()); err != nil {
			t.Fatal(err)
		}
		r.waitFor(t, fmt.Sprintf("forktest: round %d ok", round), 2*time.Minute)
	}
	r.end(t)
	checkRounds(t, r.out.String(), rounds)
}

// A snapshot taken while a guest fork holds the machine (as the control
// API's PUT /snapshot does) waits for nothing and resumes nothing: the
// clones' registers and memory still agree, and the snapshot restores to
// the parent just past its sf_clone.
func TestSnapshotWhileGuestForks(t *testing.T) {
	const rounds = 2
	dir := t.TempDir()
	snaps := make(chan error, rounds+1)
	taken := 0 // on the forking vCPU's goroutine only
	r := newForkRig(t, rounds, func(vm *vmm.VM) {
		taken++
		_, err := vm.Snapshot(context.Background(), filepath.Join(dir, fmt.Sprint(taken)), vmm.SnapshotOptions{})
		snaps <- err
	})
	r.end(t)
	checkRounds(t, r.out.String(), rounds)
	close(snaps)
	n := 0
	for err := range snaps {
		n++
		if err != nil {
			t.Errorf("snapshot in round %d: %v", n, err)
		}
	}
	if n != rounds {
		t.Fatalf("%d snapshots for %d forks", n, rounds)
	}
	// Restored without fork, the parent goes on from the fork: it
	// overwrites the region, and its sf_join finds no fork device.
	res := vmtest.Restore(t, filepath.Join(dir, "1"), 2*time.Minute).Wait(t)
	res.Contains(t, "forktest: round 1: sf_join:")
}
