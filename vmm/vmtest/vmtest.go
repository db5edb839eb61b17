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
	Kernel  string // path of the kernel image (required)
	Initrd  string
	Cmdline string
	CPUs    int           // default 1
	Memory  uint64        // bytes; default 128 MiB
	Timeout time.Duration // default 2 minutes; the test fails when it passes
}

// Result is how a guest ended and what it printed on its serial console.
type Result struct {
	Serial string
	Exit   vmm.Exit
}

// syncBuffer is a bytes.Buffer safe for the UART writer and the test.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Boot runs the guest to its end and returns the result. It fails the test
// if the machine cannot be built, the VMM fails, or the timeout passes.
func Boot(t testing.TB, o Options) Result {
	t.Helper()
	if o.CPUs == 0 {
		o.CPUs = 1
	}
	if o.Memory == 0 {
		o.Memory = 128 << 20
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	var serial syncBuffer
	vm, err := vmm.New(vmm.Config{
		KernelPath: o.Kernel, InitrdPath: o.Initrd, Cmdline: o.Cmdline,
		CPUs: o.CPUs, MemBytes: o.Memory, Console: &serial, Logf: t.Logf,
	})
	if err != nil {
		t.Fatalf("boot %s: %v", o.Kernel, err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeoutCause(context.Background(), o.Timeout, errors.New("vmtest timeout"))
	defer cancel()
	exit, err := vm.Run(ctx)
	r := Result{Serial: serial.String(), Exit: exit}
	if err != nil {
		t.Fatalf("run %s: %v\nserial output:\n%s", o.Kernel, err, r.Serial)
	}
	if exit.Reason == vmm.ExitStopped {
		t.Fatalf("%s did not end within %v\n%sserial output:\n%s", o.Kernel, o.Timeout, vm.DescribeVCPUs(), r.Serial)
	}
	return r
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
