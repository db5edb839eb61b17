//go:build kvm

package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/vmtest"
)

func TestHello(t *testing.T) {
	for _, tc := range []struct {
		cmdline string
		status  int
	}{
		{"", 1},
		{"exit=3", 7},
	} {
		t.Run(fmt.Sprintf("exit=%q", tc.cmdline), func(t *testing.T) {
			r := vmtest.Boot(t, vmtest.Options{Kernel: vmtest.Kernel(t, "hello"), Cmdline: tc.cmdline})
			r.Contains(t, "hello from sfvmm", tc.cmdline)
			r.Status(t, tc.status)
		})
	}
}

func TestSMP(t *testing.T) {
	for _, cpus := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("cpus=%d", cpus), func(t *testing.T) {
			r := vmtest.Boot(t, vmtest.Options{Kernel: vmtest.Kernel(t, "smp"), CPUs: cpus})
			r.Contains(t, fmt.Sprintf("smp: %d of %d cpus online", cpus, cpus))
			for i := 0; i < cpus; i++ {
				r.Contains(t, fmt.Sprintf("cpu %d online", i))
			}
			r.Status(t, 1)
		})
	}
}

func TestMemtest256M(t *testing.T) {
	r := vmtest.Boot(t, vmtest.Options{
		Kernel: vmtest.Kernel(t, "memtest"), Cmdline: "size=256M", Memory: 512 << 20,
	})
	r.Contains(t, fmt.Sprintf("memtest: ok %d bytes", 256<<20))
	r.Status(t, 1)
}

func TestMemtestTooBig(t *testing.T) {
	r := vmtest.Boot(t, vmtest.Options{
		Kernel: vmtest.Kernel(t, "memtest"), Cmdline: "size=256M", Memory: 128 << 20,
	})
	r.Status(t, 5)
}

func TestLongMode(t *testing.T) {
	r := vmtest.Boot(t, vmtest.Options{Kernel: vmtest.Kernel(t, "longmode")})
	r.Contains(t, "long mode: ok")
	r.Status(t, 1)
}

// A guest poking ports and MMIO nobody claims keeps running and sees all ones.
func TestUnclaimedAccesses(t *testing.T) {
	r := vmtest.Boot(t, vmtest.Options{Kernel: vmtest.Kernel(t, "poke")})
	r.Contains(t, "poke: still alive after")
	r.Status(t, 1)
}

func TestTripleFault(t *testing.T) {
	r := vmtest.Boot(t, vmtest.Options{Kernel: vmtest.Kernel(t, "triple")})
	r.Contains(t, "triple: faulting now")
	if r.Exit.Reason != vmm.ExitTripleFault {
		t.Errorf("exit %v, want a triple fault", r.Exit)
	}
	// KVM on AMD (the sandbox's CPU) resets the vCPU at the shutdown, so
	// registers read afterwards are the reset vector's, not the fault's.
	if strings.Contains(r.Exit.Detail, "rip 0xfff0 ") {
		t.Errorf("the triple fault is reported at the reset vector: %s", r.Exit.Detail)
	}
	r.Status(t, vmm.StatusTripleFault)
}

// linuxKernel is Debian's kernel, which the sandbox extracts and names in
// SFVMM_LINUX_KERNEL.
func linuxKernel(t *testing.T) (kernel, initrd string) {
	t.Helper()
	kernel = os.Getenv("SFVMM_LINUX_KERNEL")
	if kernel == "" {
		t.Fatal("SFVMM_LINUX_KERNEL is not set: run through `go run ./tests/kvmbox` or `make test`")
	}
	initrd = filepath.Join(vmtest.Root(t), "build", "kernels", "initramfs.cpio")
	if _, err := os.Stat(initrd); err != nil {
		t.Fatalf("initramfs missing (run `make kernels`): %v", err)
	}
	return kernel, initrd
}

// LinuxCmdline is the command line sfvmm's Linux tests and demo use.
const linuxCmdline = vmm.DefaultLinuxCmdline + " quiet"

// Debian's kernel boots with 2 vCPUs to the busybox init, which sees both,
// runs the command from the kernel command line and powers off: as the
// bzImage unpacked on the host (sfvmm run's default), as the bzImage
// decompressing itself, and as the unpacked vmlinux that Firecracker-style
// VMMs boot.
func TestLinuxBoot(t *testing.T) {
	bzImage, initrd := linuxKernel(t)
	cache := t.TempDir()
	for _, tc := range []struct {
		name, kernel string
		unpack       bool
	}{
		{"bzImage unpacked on the host", bzImage, true},
		{"bzImage decompressing itself", bzImage, false},
		{"vmlinux", os.Getenv("SFVMM_LINUX_VMLINUX"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.kernel == "" {
				t.Fatal("SFVMM_LINUX_VMLINUX is not set: run through tests/kvmbox or `make test`")
			}
			running := vmtest.Start(t, vmtest.Options{
				Kernel: tc.kernel, Initrd: initrd, CPUs: 2, Memory: 256 << 20,
				UnpackKernel: tc.unpack, KernelCache: cache,
				Cmdline: linuxCmdline + ` sfvmm.run="echo answer=$((6*7))"`,
				Timeout: 5 * time.Minute,
			})
			r := running.Wait(t)
			r.Contains(t, "sfvmm-init: 2 cpus", "answer=42", "sfvmm-init: command exited 0")
			stats, err := running.VM.KVMStats()
			if err != nil {
				t.Fatal(err)
			}
			checkStage2Faults(t, stats)
			if r.Exit.Reason != vmm.ExitPowerOff {
				t.Errorf("exit %v, want a power-off", r.Exit)
			}
			r.Status(t, 0)
			if m, _ := filepath.Glob(filepath.Join(cache, "vmlinux-*")); tc.unpack && len(m) != 1 {
				t.Errorf("kernel cache holds %v, want the unpacked kernel", m)
			}
		})
	}
	// The command line's machine may fork (by default), which must not
	// cost its boot huge pages either.
	t.Run("sfvmm run", func(t *testing.T) {
		out, code := run(t, 5*time.Minute, sfvmmPath(t), "run", "--stats", "--cpus", "2", "--memory", "256M",
			"--kernel", bzImage, "--initrd", initrd, "--kernel-cache", cache,
			"--cmdline", linuxCmdline+` sfvmm.run="echo answer=$((6*7)) && sleep 3"`)
		if code != 0 || !strings.Contains(out, "answer=42") {
			t.Fatalf("exit %d, want 0 and answer=42:\n%s", code, out)
		}
		checkIdleInterruptions(t, out)
		m := kvmStatsRE.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no KVM statistics in the output:\n%s", out)
		}
		stats := map[string]uint64{}
		for _, kv := range strings.Fields(m[1]) {
			k, v, _ := strings.Cut(kv, "=")
			stats[k], _ = strconv.ParseUint(v, 10, 64)
		}
		checkStage2Faults(t, stats)
	})
}

var kvmStatsRE = regexp.MustCompile(`stats: kvm: (.*)`)

var interruptedRE = regexp.MustCompile(`stats: exits: .* interrupted=(\d+) `)

// maxLinuxBootInterruptions bounds the runs of KVM_RUN that a signal cut
// short in a Linux boot that then sleeps 3 s, on 2 vCPUs: about 25 in all.
// A vCPU that kept its Go P in an idle guest would be preempted by the
// runtime every 10 ms, over 100 times a second for each vCPU.
const maxLinuxBootInterruptions = 400

// checkIdleInterruptions fails the test if sfvmm's exit statistics show
// the vCPUs' runs interrupted more than maxLinuxBootInterruptions times.
func checkIdleInterruptions(t *testing.T, out string) {
	t.Helper()
	m := interruptedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no exit statistics in the output:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	t.Logf("%d interrupted runs", n)
	if n > maxLinuxBootInterruptions {
		t.Errorf("%d runs of KVM_RUN interrupted, want at most %d: does an idle vCPU keep its P?", n, maxLinuxBootInterruptions)
	}
}

// maxLinuxBootFaults bounds the stage-2 (NPT/EPT) page faults KVM takes in
// a Linux boot: about 50 with guest RAM on 2 MiB pages, 20,000 on 4 KiB
// pages, as when guest RAM was not 2 MiB aligned.
const maxLinuxBootFaults = 2000

// checkStage2Faults fails the test if the boot took more than
// maxLinuxBootFaults stage-2 faults, where the host's KVM counts them
// (pf_taken, in kernels since 2022) and offers transparent huge pages.
func checkStage2Faults(t *testing.T, stats map[string]uint64) {
	t.Helper()
	n, ok := stats["pf_taken"]
	if !ok {
		t.Logf("this host's KVM does not count stage-2 faults (pf_taken)")
		return
	}
	if thp, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled"); err != nil || strings.Contains(string(thp), "[never]") {
		t.Logf("%d stage-2 faults; no transparent huge pages on this host (%q, %v)", n, thp, err)
		return
	}
	t.Logf("%d stage-2 faults", n)
	if n > maxLinuxBootFaults {
		t.Errorf("the boot took %d stage-2 faults, want at most %d: is guest RAM on huge pages?", n, maxLinuxBootFaults)
	}
}
