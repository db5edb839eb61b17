//go:build kvm

package tests

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Sixteen VMs at once on one host: what a host running a family of clones
// does. (A sixteen-clone fork is in stress_test.go.)

// Sixteen Linux VMs boot at once, each to its init, which prints the VM's
// number and a sum and powers off.
func TestBoot16Linux(t *testing.T) {
	const vms = 16
	kernel, initrd := linuxKernel(t)
	cache := t.TempDir()
	// One unpacked kernel for all: the first run fills the cache.
	if out, code := run(t, 5*time.Minute, sfvmmPath(t), "run", "--memory", "128M", "--kernel", kernel, "--initrd", initrd,
		"--kernel-cache", cache, "--cmdline", linuxCmdline+` sfvmm.run="true"`); code != 0 {
		t.Fatalf("first boot: exit %d:\n%s", code, out)
	}
	var wg sync.WaitGroup
	sfvmm := sfvmmPath(t)
	outs, errs := make([]string, vms), make([]error, vms)
	for i := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, sfvmm, "run", "--memory", "128M",
				"--kernel", kernel, "--initrd", initrd, "--kernel-cache", cache,
				"--cmdline", fmt.Sprintf(`%s sfvmm.run="echo vm %d answer=$((6*7))"`, linuxCmdline, i)).CombinedOutput()
			outs[i], errs[i] = string(out), err
		}()
	}
	wg.Wait()
	for i := range vms {
		if want := fmt.Sprintf("vm %d answer=42", i); errs[i] != nil || !strings.Contains(outs[i], want) {
			t.Errorf("VM %d: %v, want exit status 0 and %q:\n%s", i, errs[i], want, outs[i])
		}
	}
}
