// Package vmtest lets a Go test boot a kernel in sfvmm and assert on what it
// printed and how it ended, in a few lines:
//
//	r := vmtest.Boot(t, vmtest.Options{Kernel: vmtest.Kernel(t, "hello"), Cmdline: "exit=3"})
//	r.Contains(t, "hello from sfvmm")
//	r.Status(t, 7)
//
// Tests that boot guests need /dev/kvm. They are built with the `kvm` tag
// and run through the nested sandbox (tests/kvmbox) where the host has no
// KVM; without KVM they fail rather than skip, because a KVM test that
// skips proves nothing.
package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/vmm"
)

// Options describes a guest to boot. Zero values take the defaults noted.
type Options struct {
	Kernel string // path of the kernel image (required)
	// UnpackKernel and KernelCache are vmm.Config's: a bzImage's kernel
	// unpacked on the host, kept in KernelCache.
	UnpackKernel bool
	KernelCache  string
	Initrd       string
	Cmdline      string
	CPUs         int           // default 1
	Memory       uint64        // bytes; default 128 MiB
	Timeout      time.Duration // default 2 minutes; the test fails when it passes
}

// Result is how a guest ended and what it printed on its serial console.
type Result struct {
	Serial string
	Exit   vmm.Exit
}

// syncBuffer is a bytes.Buffer safe for the UART writer and the test; it
// wakes WaitFor callers on every write.
type syncBuffer struct {
	mu      sync.Mutex // guards b and changed
	b       bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{changed: make(chan struct{})} }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.changed)
	s.changed = make(chan struct{})
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor blocks until the buffer contains want or ctx ends.
func (s *syncBuffer) waitFor(ctx context.Context, want string) bool {
	for {
		s.mu.Lock()
		found := strings.Contains(s.b.String(), want)
		ch := s.changed
		s.mu.Unlock()
		if found {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// Boot runs the guest to its end and returns the result. It fails the test
// if the machine cannot be built, the VMM fails, or the timeout passes.
func Boot(t testing.TB, o Options) Result {
	t.Helper()
	return Start(t, o).Wait(t)
}

// Running is a guest started by Start or Restore.
type Running struct {
	VM      *vmm.VM
	name    string
	serial  *syncBuffer
	timeout time.Duration
	done    chan struct{} // closed when Run returns
	exit    vmm.Exit
	err     error
	cancel  context.CancelFunc
}

// Log is a logger into the test's log, debug messages included.
func Log(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// Start boots the guest and returns at once; the test ends it with Wait or
// Stop. It is stopped and released when the test ends in any case.
func Start(t testing.TB, o Options) *Running {
	t.Helper()
	if o.CPUs == 0 {
		o.CPUs = 1
	}
	if o.Memory == 0 {
		o.Memory = 128 << 20
	}
	serial := newSyncBuffer()
	vm, err := vmm.New(vmm.Config{
		KernelPath: o.Kernel, UnpackKernel: o.UnpackKernel, KernelCache: o.KernelCache,
		InitrdPath: o.Initrd, Cmdline: o.Cmdline,
		CPUs: o.CPUs, MemBytes: o.Memory, Console: serial, Log: Log(t),
	})
	if err != nil {
		t.Fatalf("boot %s: %v", o.Kernel, err)
	}
	return run(t, vm, o.Kernel, serial, o.Timeout)
}

// Restore continues the guest saved in snapshot directory dir.
func Restore(t testing.TB, dir string, timeout time.Duration) *Running {
	t.Helper()
	serial := newSyncBuffer()
	vm, err := vmm.RestoreDir(dir, vmm.RestoreConfig{Console: serial, Log: Log(t)})
	if err != nil {
		t.Fatalf("restore %s: %v", dir, err)
	}
	return run(t, vm, "restored "+dir, serial, timeout)
}

func run(t testing.TB, vm *vmm.VM, name string, serial *syncBuffer, timeout time.Duration) *Running {
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeoutCause(context.Background(), timeout, errors.New("vmtest timeout"))
	r := &Running{VM: vm, name: name, serial: serial, timeout: timeout, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(r.done)
		r.exit, r.err = vm.Run(ctx)
	}()
	t.Cleanup(func() {
		r.cancel()
		<-r.done
		vm.Close()
	})
	return r
}

// Serial is what the guest has printed so far.
func (r *Running) Serial() string { return r.serial.String() }

// WaitFor waits until the guest has printed want and fails the test if it
// ends or the timeout passes first.
func (r *Running) WaitFor(t testing.TB, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	go func() {
		select {
		case <-r.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	if !r.serial.waitFor(ctx, want) {
		how := "still running"
		if r.ended() {
			how = fmt.Sprintf("ended: %v (run error: %v)", r.exit, r.err)
		}
		t.Fatalf("%s: %q never appeared; guest %s\nserial output:\n%s", r.name, want, how, r.Serial())
	}
}

func (r *Running) ended() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// Stop ends the guest from the host.
func (r *Running) Stop() {
	r.cancel()
	<-r.done
}

// Wait waits for the guest to end by itself and returns the result.
func (r *Running) Wait(t testing.TB) Result {
	t.Helper()
	<-r.done
	res := Result{Serial: r.Serial(), Exit: r.exit}
	if r.err != nil {
		t.Fatalf("run %s: %v\nserial output:\n%s", r.name, r.err, res.Serial)
	}
	if r.exit.Reason == vmm.ExitStopped {
		t.Fatalf("%s did not end within %v\n%sserial output:\n%s", r.name, r.timeout, r.VM.DescribeVCPUs(), res.Serial)
	}
	return res
}

// Contains fails the test unless the serial output contains each of want.
func (r Result) Contains(t testing.TB, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(r.Serial, w) {
			t.Errorf("serial output lacks %q; got:\n%s", w, r.Serial)
		}
	}
}

// Status fails the test unless sfvmm would exit with code want.
func (r Result) Status(t testing.TB, want int) {
	t.Helper()
	if got := r.Exit.Status(); got != want {
		t.Errorf("exit status %d (%v), want %d; serial output:\n%s", got, r.Exit, want, r.Serial)
	}
}

// Root returns the repository root (the directory holding go.mod).
func Root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("vmtest: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Kernel returns the path of tiny test kernel name (built by `make kernels`
// into build/kernels/NAME.elf) and fails the test if it is missing.
func Kernel(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(Root(t), "build", "kernels", name+".elf")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test kernel %s missing (run `make kernels`): %v", name, err)
	}
	return p
}
