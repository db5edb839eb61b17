// Command balloon is issue 12's benchmark of free page reporting: the pages
// a fork sends to a clone of a Linux guest that freed most of its memory
// before forking, with sfvmm's virtio-balloon (--balloon) and without. It
// prints Markdown tables. Run it where /dev/kvm works, e.g.
//
//	make bench-balloon   (= tests/kvmbox/kvmbox.sh -- build/bench/balloon)
//
// Each run boots Debian's kernel (sfvmm's test initramfs with the virtio
// and virtio_balloon modules appended) in a -memory-mib guest. Its script
// fills a tmpfs with -free-mib of random data and deletes it, so that the
// guest's free memory is pages that hold data; it sleeps -settle, time for
// the balloon driver to report those pages free (Linux waits 2 s after a
// free before it reports), then forks one clone, which writes -touch-mib
// to its own tmpfs and exits. Linux hands out recently freed pages first,
// so the clone's writes land on the pages the parent freed.
//
// With --balloon, sfvmm dropped the reported pages from the parent's RAM:
// the fork does not count them as populated, and the clone fills them with
// zeros locally. Without, they are populated at the fork, and every one the
// clone touches is fetched from the parent's memory server. The tables
// show, per clone, the pages fetched and zero-filled (the clone's memtap
// statistics line), the bytes its memory server connection received, and
// the parent's populated pages at the fork (read from the fork descriptor
// while the clone runs). A clone on the parent's host reads most fetched
// pages from the parent's memory directly, so its bytes received are little
// more than requests and handshake; "MiB fetched" (pages × 4 KiB) is about what
// a clone on another host would receive. Figures are medians of -reps runs
// of each.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/sfvmm/sfvmm/tests/bench/internal/benchproc"
	"github.com/sfvmm/sfvmm/tests/guestmod"
	"github.com/sfvmm/sfvmm/vmm/fork"
)

// modules are the guest kernel's modules for the balloon, in load order
// (paths under lib/modules/RELEASE/kernel, without .ko).
var modules = []string{"drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_mmio", "drivers/virtio/virtio_balloon"}

const linuxCmdline = "console=ttyS0 reboot=k panic=-1 pci=off quiet"

const pageSize = 4096

type bench struct {
	sfvmm, kernel, initrd string
	tmp                   string // the bench's scratch directory
	memMiB, freeMiB       int
	touchMiB              int
	settle                time.Duration
	timeout               time.Duration
}

// result is one run's figures.
type result struct {
	populated uint64 // the parent's guest RAM pages populated at the fork
	faults    uint64 // the clone's page faults
	fetched   uint64 // pages the clone fetched from the parent
	direct    uint64 // of the fetched, read from the parent's memory directly
	zero      uint64 // pages the clone filled with zeros locally
	prefetch  uint64 // of the fetched, prefetched beside a fault
	received  uint64 // bytes the clone's memtap received
}

func main() {
	root := flag.String("root", ".", "repository root")
	b := &bench{}
	flag.StringVar(&b.sfvmm, "sfvmm", "sfvmm", "sfvmm binary")
	reps := flag.Int("reps", 2, "runs with and without the balloon each (the tables show medians)")
	flag.IntVar(&b.memMiB, "memory-mib", 512, "guest RAM in MiB")
	flag.IntVar(&b.freeMiB, "free-mib", 400, "MiB the guest writes to a tmpfs and deletes before forking")
	flag.IntVar(&b.touchMiB, "touch-mib", 64, "MiB the clone writes to its tmpfs before it exits")
	flag.DurationVar(&b.settle, "settle", 10*time.Second, "the guest's sleep between freeing and forking, for free page reporting to run (whole seconds)")
	flag.DurationVar(&b.timeout, "timeout", 10*time.Minute, "bound on one step of a run (boot and free, fork, clone, join)")
	flag.Parse()
	if *reps < 1 || b.freeMiB < 1 || b.touchMiB < 1 || b.freeMiB >= b.memMiB || b.settle < time.Second {
		fail(fmt.Errorf("want -reps, -free-mib, -touch-mib ≥ 1, -free-mib below -memory-mib and -settle ≥ 1s"))
	}
	b.kernel = os.Getenv("SFVMM_LINUX_KERNEL")
	if b.kernel == "" {
		fail(fmt.Errorf("SFVMM_LINUX_KERNEL is not set: run through tests/kvmbox (make bench-balloon)"))
	}
	var err error
	if b.tmp, err = os.MkdirTemp("", "sfvmm-bench-balloon-"); err != nil {
		fail(err)
	}
	defer os.RemoveAll(b.tmp)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		benchproc.KillAll()
		os.RemoveAll(b.tmp)
		os.Exit(1)
	}()
	b.initrd = filepath.Join(b.tmp, "initrd.cpio")
	if err = guestmod.Append(filepath.Join(*root, "build", "kernels", "initramfs.cpio"), b.kernel, b.initrd, modules); err != nil {
		fail(err)
	}

	start := time.Now()
	fmt.Printf("sfvmm free page reporting benchmark: %d MiB Linux guest frees %d MiB, forks one clone that writes %d MiB; %d runs each, medians\n\n",
		b.memMiB, b.freeMiB, b.touchMiB, *reps)
	runs := map[bool][]result{}
	for i := 0; i < *reps; i++ {
		for _, on := range []bool{true, false} { // in turns, so that drift in the sandbox hits both
			r, err := b.run(on, len(runs[true])+len(runs[false]))
			if err != nil {
				benchproc.KillAll()
				fail(fmt.Errorf("--balloon=%v, run %d: %w", on, i+1, err))
			}
			runs[on] = append(runs[on], r)
		}
	}

	fmt.Println("Pages per clone of a guest that freed most of its memory, with free page reporting (--balloon=true) and without")
	fmt.Println()
	fmt.Println("| --balloon | parent's pages populated at the fork | clone's faults | pages fetched | MiB fetched | of those read directly | of those prefetched | MiB received from the server | zero-filled locally | fetched: off / on |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	med := map[bool]map[string]float64{}
	for _, on := range []bool{true, false} {
		med[on] = map[string]float64{
			"populated": median(runs[on], func(r result) uint64 { return r.populated }),
			"faults":    median(runs[on], func(r result) uint64 { return r.faults }),
			"fetched":   median(runs[on], func(r result) uint64 { return r.fetched }),
			"direct":    median(runs[on], func(r result) uint64 { return r.direct }),
			"prefetch":  median(runs[on], func(r result) uint64 { return r.prefetch }),
			"received":  median(runs[on], func(r result) uint64 { return r.received }),
			"zero":      median(runs[on], func(r result) uint64 { return r.zero }),
		}
	}
	for _, on := range []bool{true, false} {
		m := med[on]
		ratio := "1"
		if !on {
			ratio = "—"
			if med[true]["fetched"] > 0 {
				ratio = fmt.Sprintf("%.1f", m["fetched"]/med[true]["fetched"])
			}
		}
		fmt.Printf("| %v | %.0f | %.0f | %.0f | %.1f | %.0f | %.0f | %.1f | %.0f | %s |\n", on, m["populated"], m["faults"], m["fetched"],
			m["fetched"]*pageSize/(1<<20), m["direct"], m["prefetch"], m["received"]/(1<<20), m["zero"], ratio)
	}
	fmt.Println()
	fmt.Println("Each run")
	fmt.Println()
	fmt.Println("| run | --balloon | populated at the fork | faults | pages fetched | read directly | prefetched | bytes received | zero-filled locally |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for i := 0; i < *reps; i++ {
		for j, on := range []bool{true, false} {
			r := runs[on][i]
			fmt.Printf("| %d | %v | %d | %d | %d | %d | %d | %d | %d |\n", 2*i+j+1, on,
				r.populated, r.faults, r.fetched, r.direct, r.prefetch, r.received, r.zero)
		}
	}
	fmt.Println()
	fmt.Printf("(%d MiB is %d pages; run took %v)\n", b.freeMiB, b.freeMiB<<20/pageSize, time.Since(start).Round(time.Second))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// median returns the median of f over rs (the mean of the middle two for
// an even count).
func median(rs []result, f func(result) uint64) float64 {
	var v []uint64
	for _, r := range rs {
		v = append(v, f(r))
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return float64(v[n/2])
	}
	return (float64(v[n/2-1]) + float64(v[n/2])) / 2
}

// script is the guest's command. The initramfs's root is a tmpfs capped at
// half of RAM, too small for -free-mib, so /tmp gets a tmpfs of its own.
// The clone's data is random too, so that no page of it is zero.
func (b *bench) script() string {
	return guestmod.Insmods(modules...) +
		fmt.Sprintf(" && mount -t tmpfs -o size=95%% tmpfs /tmp && head -c %d /dev/urandom > /tmp/f && rm /tmp/f && echo freed && sleep %d && ",
			b.freeMiB<<20, int(b.settle/time.Second)) +
		"t=$(sfctl ticket 1) && id=$(sfctl clone $t) && if [ $id != 0 ]; then " +
		fmt.Sprintf("head -c %d /dev/urandom > /tmp/g && echo clone wrote; sfctl exit; fi; ", b.touchMiB<<20) +
		"sfctl join $t && echo parent joined"
}

// cloneCrashed matches a clone's report that its guest or its VMM failed.
var cloneCrashed = regexp.MustCompile(`^sfvmm clone \d+: (error: |guest ended: (triple fault|reset|error))`)

// memtapRE matches the clone's statistics at exit; the bytes received are
// vmm.FormatSize's "N MiB", "N bytes" or "N.N GiB".
var memtapRE = regexp.MustCompile(`^sfvmm clone 1: memtap: (\d+) faults, (\d+) pages fetched, (\d+) zero-filled locally, (\d+) read from the parent directly, (\d+) prefetched, \d+ requests, ([\d.]+) (bytes|KiB|MiB|GiB|TiB) received`)

// run boots the guest with the balloon on or not and returns the clone's
// figures. Its sfvmm gets a TMPDIR of its own, where the fork directory
// (and in it the fork descriptor) is made.
func (b *bench) run(on bool, n int) (result, error) {
	var r result
	tmp := filepath.Join(b.tmp, fmt.Sprintf("run-%d", n))
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return r, err
	}
	p, err := benchproc.Start("env", "TMPDIR="+tmp, b.sfvmm, "run", fmt.Sprintf("--balloon=%v", on),
		"--kernel", b.kernel, "--initrd", b.initrd, "--memory", fmt.Sprintf("%dM", b.memMiB),
		"--cmdline", linuxCmdline+` sfvmm.run="`+b.script()+`"`)
	if err != nil {
		return r, err
	}
	defer p.Kill()
	if _, _, _, err := p.WaitLine(0, regexp.MustCompile(`^freed\s*$`), false, b.timeout, "the guest filling and freeing"); err != nil {
		return r, err
	}
	_, i, _, err := p.WaitLineUnless(0, regexp.MustCompile(`^sfvmm clone 1: running `), true, cloneCrashed, b.timeout, "the clone running")
	if err != nil {
		return r, err
	}
	// The descriptor stays until the parent's VMM ends.
	ds, err := filepath.Glob(filepath.Join(tmp, "sfvmm-fork-*", "image-*.sfd"))
	if err != nil || len(ds) != 1 {
		return r, fmt.Errorf("fork descriptors in %s: %q (%v), want one", tmp, ds, err)
	}
	_, h, err := fork.ReadDescriptor(ds[0])
	if err != nil {
		return r, err
	}
	for _, m := range h.Memory {
		r.populated += m.Pages.Count()
	}
	_, _, m, err := p.WaitLineUnless(i, memtapRE, true, cloneCrashed, b.timeout, "the clone's memtap statistics")
	if err != nil {
		return r, err
	}
	if _, _, _, err := p.WaitLine(i, regexp.MustCompile(`^\[clone 1\] clone wrote\s*$`), false, b.timeout, "the clone's writes"); err != nil {
		return r, err
	}
	if _, _, _, err := p.WaitLine(i, regexp.MustCompile(`^parent joined\s*$`), false, b.timeout, "the parent's join"); err != nil {
		return r, err
	}
	v := func(i int) uint64 { n, _ := strconv.ParseUint(m[i], 10, 64); return n }
	r.faults, r.fetched, r.zero, r.direct, r.prefetch = v(1), v(2), v(3), v(4), v(5)
	size, _ := strconv.ParseFloat(m[6], 64)
	shift := map[string]uint{"bytes": 0, "KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}[m[7]]
	r.received = uint64(size * float64(uint64(1)<<shift))
	if ok, err := p.ExitedWithin(b.timeout); !ok || err != nil {
		return r, fmt.Errorf("the parent did not end well after the join (ended %v: %v):\n%s", ok, err, p.Tail(20))
	}
	return r, nil
}
