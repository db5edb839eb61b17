//go:build kvm

package tests

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Sixteen VMs at once on one host, with and without a fork: what a host
// running a family of clones does.

// The forktest kernel forks 16 clones; each checks the pre-fork pattern
// and that the memory the parent never touched reads as zero, while the
// parent overwrites the pattern.
func TestFork16Clones(t *testing.T) {
	const clones = 16
	p := forktest(t, fmt.Sprintf("mode=fork clones=%d size=16M", clones), "--fork-capacity", fmt.Sprint(clones))
	if code := p.wait(t, 4*time.Minute); code != 1 {
		t.Fatalf("exit status %d, want 1 (debug-exit 0): %s\n%s", code, p.trouble(), p.Output())
	}
	out := p.Output()
	m := regexp.MustCompile(`forktest: 16777216 bytes written at 0x1000000, checksum (0x[0-9a-f]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no pre-fork checksum:\n%s", out)
	}
	for id := 1; id <= clones; id++ {
		for _, want := range []string{
			fmt.Sprintf("[clone %d] forktest: clone %d: pattern ok, checksum %s, untouched memory zero", id, id, m[1]),
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
