//go:build kvm

package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/tests/guestmod"
	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/vmtest"
)

// initrdWithModules returns initrd with the guest kernel's modules mods
// appended (package guestmod).
func initrdWithModules(t *testing.T, initrd string, mods ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "initrd.cpio")
	if err := guestmod.Append(initrd, os.Getenv("SFVMM_LINUX_KERNEL"), out, mods); err != nil {
		t.Fatal(err)
	}
	return out
}

// virtioModules are the modules a guest loads, in order, for virtio-mmio
// devices that ACPI announces.
var virtioModules = []string{"drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_mmio"}

// A transport is how a Linux guest reaches sfvmm's virtio devices: sfvmm
// run's flag, the guest's command line, and the modules it loads first;
// and how the notifications reach sfvmm, which the tests that run on each
// transport (the disk's) try one way each (--notify).
type transport struct {
	name    string
	flag    string
	cmdline string
	mods    []string
	notify  string
}

// transports are both of sfvmm's: virtio-mmio, and virtio-pci with its
// modules (and no pci=off). The sandbox has one CPU, where --notify auto
// takes exits: pci takes ioeventfds.
var transports = []transport{
	{"mmio", "--virtio=mmio", linuxCmdline, virtioModules, "exit"},
	{"pci", "--virtio=pci", vmm.DefaultLinuxCmdlinePCI + " quiet", []string{"drivers/virtio/virtio_ring", "drivers/virtio/virtio",
		"drivers/virtio/virtio_pci_modern_dev", "drivers/virtio/virtio_pci_legacy_dev", "drivers/virtio/virtio_pci"}, "ioeventfd"},
}

// insmods is the guest's shell command that loads mods from /m.
func insmods(mods ...string) string { return guestmod.Insmods(mods...) }

// A Linux guest finds sfvmm's virtio-rng through ACPI (LNRO0005), its
// hw_random core picks it, and two reads of /dev/hwrng bring different,
// non-zero bytes from the host's getrandom. Without --rng there is none.
func TestVirtioEntropy(t *testing.T) {
	kernel, initrd := linuxKernel(t)
	mods := slices.Concat(virtioModules, []string{"drivers/char/hw_random/virtio-rng"})
	initrd = initrdWithModules(t, initrd, mods...)
	cmd := insmods(mods...) + ` && echo rng=$(cat /sys/class/misc/hw_random/rng_current) && ` +
		`for i in 1 2; do echo read=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \n'); done`
	args := []string{"run", "--memory", "256M", "--kernel", kernel, "--initrd", initrd,
		"--cmdline", linuxCmdline + ` sfvmm.run="` + cmd + `"`}
	out, code := run(t, 5*time.Minute, sfvmmPath(t), append(args, "--rng")...)
	if code != 0 || !strings.Contains(out, "rng=virtio_rng.0") || !strings.Contains(out, "sfvmm-init: command exited 0") {
		t.Fatalf("exit %d, want 0 and rng=virtio_rng.0:\n%s", code, out)
	}
	reads := regexp.MustCompile(`read=([0-9a-f]{64})`).FindAllStringSubmatch(out, -1)
	if len(reads) != 2 || reads[0][1] == reads[1][1] || reads[0][1] == strings.Repeat("0", 64) {
		t.Errorf("reads of /dev/hwrng %v: want two different, not zero", reads)
	}
	t.Logf("%v", regexp.MustCompile(`(rng|read)=\S+`).FindAllString(out, -1))
	out, code = run(t, 5*time.Minute, sfvmmPath(t), args...)
	if !strings.Contains(out, "rng=none") {
		t.Errorf("without --rng: exit %d, want rng=none:\n%s", code, out)
	}
}

// A hostile driver (the virtiobad kernel) puts each kind of malformed input
// in virtio-rng's queue, or negotiates wrongly: the device refuses each
// with DEVICE_NEEDS_RESET and one log line, sfvmm runs on, the disk beside
// it serves a read while the rng is failed, and after the resets good
// requests, direct and through an indirect table, are served. With each
// --notify: the malformed chains reach the device on the vCPU's thread or
// on the queue's.
func TestVirtioHostileDriver(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	sector := make([]byte, 4096)
	copy(sector, "sector zero of the disk")
	if err := os.WriteFile(img, sector, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, notify := range []string{"exit", "ioeventfd"} {
		t.Run(notify, func(t *testing.T) { testVirtioHostileDriver(t, notify, img) })
	}
}

func testVirtioHostileDriver(t *testing.T, notify, img string) {
	out, code := run(t, 2*time.Minute, sfvmmPath(t), "run", "--notify", notify, "--rng", "--disk", img, "--kernel", vmtest.Kernel(t, "virtiobad"))
	if code != 1 || !strings.Contains(out, "virtiobad: good request after the resets: 32 bytes") || !strings.Contains(out, "virtiobad: good indirect request: 32 bytes") {
		t.Fatalf("exit %d, want 1 (debug-exit 0) and both good requests served:\n%s", code, out)
	}
	if !strings.Contains(out, "virtiobad: disk while the rng is failed: sector zero of the disk") {
		t.Errorf("the disk did not serve its read while the rng was failed:\n%s", out)
	}
	for _, c := range []string{"buffer outside RAM", "oversized length", "descriptor loop", "chain longer than the queue",
		"head index past the queue", "avail index past the queue's size", "indirect descriptor not negotiated",
		"indirect table outside RAM", "loop in an indirect table", "indirect table in an indirect table",
		"features without VERSION_1", "DRIVER_OK without FEATURES_OK"} {
		if !strings.Contains(out, "virtiobad: "+c+": refused") {
			t.Errorf("%s: not refused", c)
		}
	}
	// One line per failure, saying what was wrong.
	lines := regexp.MustCompile(`virtio-rng needs a reset: .*`).FindAllString(out, -1)
	for _, l := range lines {
		t.Log(l)
	}
	if len(lines) != 11 {
		t.Errorf("%d log lines of a device needing reset, want 11 (one per failing case):\n%s", len(lines), out)
	}
}

// The VM generation ID: each clone of a Linux guest gets a new one, its
// vmgenid driver hears of it (the GPE's Notify) and reseeds the random
// number generator, and the clones' /dev/urandom streams differ. With
// --vmgenid=false no clone reseeds for the fork; whether the clones' bytes
// then differ depends on whether Linux's periodic reseed (every uptime/2
// seconds early on) falls between the fork and the read, so it is logged,
// not checked.
func TestVMGenIDClones(t *testing.T) {
	kernel, initrd := linuxKernel(t)
	// The brackets keep the pattern from matching itself on the kernel
	// command line, which dmesg also holds.
	const msg = "crng reseeded due to virtual machine for[k]"
	script := func(wait int) string {
		return `echo parent reseeds $(dmesg | grep -c '` + msg + `'); t=$(sfctl ticket 2); id=$(sfctl clone $t); ` +
			`if [ $id != 0 ]; then for i in $(seq ` + fmt.Sprint(wait) + `); do dmesg | grep -q '` + msg + `' && break; sleep 0.5; done; ` +
			`echo clone $id reseeds $(dmesg | grep -c '` + msg + `') rand $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'); sfctl exit; fi; ` +
			`sfctl join $t && echo parent joined`
	}
	re := regexp.MustCompile(`clone (\d) reseeds (\d+) rand ([0-9a-f]{32})`)
	for _, tc := range []struct {
		name    string
		flag    string
		wait    int
		reseeds string
	}{{"with the device", "--vmgenid", 120, "1"}, {"without", "--vmgenid=false", 0, "0"}} {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, sfvmmPath(t), "run", tc.flag, "--kernel", kernel, "--initrd", initrd, "--memory", "256M",
				"--cmdline", linuxCmdline+` sfvmm.run="`+script(tc.wait)+`"`)
			if code := p.wait(t, 5*time.Minute); code != 0 {
				t.Fatalf("exit status %d, want 0: %s\n%s", code, p.trouble(), p.Output())
			}
			out := p.Output()
			m := re.FindAllStringSubmatch(out, -1)
			if len(m) != 2 || !strings.Contains(out, "parent reseeds 0") || !strings.Contains(out, "parent joined") {
				t.Fatalf("want two clones' lines, no reseed in the parent before the fork, and the join:\n%s", out)
			}
			for _, c := range m {
				t.Logf("clone %s: %s reseed(s), urandom %s", c[1], c[2], c[3])
				if c[2] != tc.reseeds {
					t.Errorf("clone %s reseeded %s times, want %s", c[1], c[2], tc.reseeds)
				}
			}
			same := m[0][3] == m[1][3]
			t.Logf("the clones' bytes are the same: %v", same)
			if tc.reseeds == "1" && same {
				t.Error("the clones read the same bytes from /dev/urandom")
			}
		})
	}
}

// Free page reporting: a Linux guest writes then deletes a 200 MiB file
// (pages with data, freed), waits for its balloon driver to report them,
// and forks; the clone writes 200 MiB of its own, which reuses the freed
// pages. With --balloon the parent dropped them, so the clone fills them
// locally as zero and fetches only what it would anyway; without, it
// fetches them all.
func TestBalloonFreePages(t *testing.T) {
	kernel, initrd := linuxKernel(t)
	mods := slices.Concat(virtioModules, []string{"drivers/virtio/virtio_balloon"})
	initrd = initrdWithModules(t, initrd, mods...)
	script := insmods(mods...) + `; head -c 209715200 /dev/urandom > /tmp/f; rm /tmp/f; sleep 10; ` +
		`t=$(sfctl ticket 1); id=$(sfctl clone $t); ` +
		`if [ $id != 0 ]; then head -c 209715200 /dev/urandom > /tmp/g; echo clone wrote; sfctl exit; fi; sfctl join $t && echo parent joined`
	fetchedRE := regexp.MustCompile(`sfvmm clone 1: memtap: \d+ faults, (\d+) pages fetched, (\d+) zero-filled locally`)
	fetched := map[bool]int{}
	for _, on := range []bool{true, false} {
		p := start(t, sfvmmPath(t), "run", fmt.Sprintf("--balloon=%v", on), "--kernel", kernel, "--initrd", initrd, "--memory", "512M",
			"--cmdline", linuxCmdline+` sfvmm.run="`+script+`"`)
		if code := p.wait(t, 8*time.Minute); code != 0 {
			t.Fatalf("--balloon=%v: exit status %d, want 0: %s\n%s", on, code, p.trouble(), p.Output())
		}
		out := p.Output()
		m := fetchedRE.FindStringSubmatch(out)
		if m == nil || !strings.Contains(out, "clone wrote") || !strings.Contains(out, "parent joined") {
			t.Fatalf("--balloon=%v: no clone statistics or no join:\n%s", on, out)
		}
		fetched[on], _ = strconv.Atoi(m[1])
		t.Logf("--balloon=%v: the clone fetched %s pages and zero-filled %s", on, m[1], m[2])
	}
	// 200 MiB is 51200 pages; a Linux clone fetches a few thousand of its
	// own.
	if fetched[true] > 20000 || fetched[false] < 40000 {
		t.Errorf("pages fetched: %d with free page reporting, %d without; want under 20000 and over 40000", fetched[true], fetched[false])
	}
}
