// Command fork benchmarks VM fork in sfvmm and prints Markdown tables. Run
// it where /dev/kvm works, e.g.
//
//	make bench-fork   (= tests/kvmbox/kvmbox.sh -- build/bench/fork)
//
// It measures, in one run:
//
//   - Fork latency: a booted Linux guest (Debian's kernel, sfvmm's test
//     initramfs, 1 vCPU, 256 MiB) whose shell script, for N = 1, 4, 16,
//     prints "forking N", takes a ticket and calls `sfctl clone`; each clone
//     prints "up N ID" and exits. The latency is from the bench reading
//     "forking N" (so it includes starting sfctl twice in the guest) to the
//     last clone executing: its VMM's "running" line, printed as it starts
//     the restored vCPUs. Against it: cold-booting N sfvmm VMs of the same
//     guest at once, from process start to the last one's init printing
//     "up": the same point, a booted guest running. Target: forking into 4
//     at least 10x faster than booting 4. The table also shows the time to
//     the last clone's "up" line, which adds the clones' first touches of
//     memory (each a userfaultfd fault, slow in the nested sandbox).
//   - The parent's pause for a fork from the host (PUT /fork, what the
//     API reports) of the forktest kernel with 64 MiB and with 1 GiB of
//     populated memory (same 1200 MiB guest). Target: at most 2x apart.
//   - Pages fetched per clone against pages it touched: forktest's fork
//     mode (each of 4 clones reads a 64 MiB pattern and 16 MiB the parent
//     never touched), and the Linux clones above (which touch what their
//     shell and sfctl need).
//
// Times are medians of -n runs. In the nested sandbox absolute times are
// slow; read the ratios. memtap's page-fault service against a plain
// userfaultfd handler is measured on the host, without KVM, by
// `make bench-memtap`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sfvmm/sfvmm/tests/bench/internal/benchproc"
	"github.com/sfvmm/sfvmm/vmm/api"
)

type bench struct {
	sfvmm, kernel, initrd, forktest string
	sockDir                         string
	runs                            int
	timeout                         time.Duration
}

func main() {
	root := flag.String("root", ".", "repository root")
	b := &bench{}
	flag.StringVar(&b.sfvmm, "sfvmm", "sfvmm", "sfvmm binary")
	flag.IntVar(&b.runs, "n", 3, "runs of each measurement (the tables show medians)")
	counts := flag.String("clones", "1,4,16", "clone counts for the fork latency, comma-separated; empty: skip that stage (and its cold boots)")
	flag.DurationVar(&b.timeout, "timeout", 10*time.Minute, "bound on one boot or fork")
	flag.Parse()
	b.kernel = os.Getenv("SFVMM_LINUX_KERNEL")
	if b.kernel == "" {
		fail(fmt.Errorf("SFVMM_LINUX_KERNEL is not set: run through tests/kvmbox (make bench-fork)"))
	}
	b.initrd = filepath.Join(*root, "build", "kernels", "initramfs.cpio")
	b.forktest = filepath.Join(*root, "build", "kernels", "forktest.elf")
	var err error
	if b.sockDir, err = os.MkdirTemp("", "sfvmm-bench-fork-"); err != nil {
		fail(err)
	}
	defer os.RemoveAll(b.sockDir)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		benchproc.KillAll()
		os.Exit(1)
	}()
	var ns []int
	for _, f := range strings.Split(*counts, ",") {
		if strings.TrimSpace(*counts) == "" {
			break
		}
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 16 {
			fail(fmt.Errorf("-clones: %q is not a count from 1 to 16", f))
		}
		ns = append(ns, n)
	}
	start := time.Now()
	fmt.Printf("sfvmm fork benchmark: %d runs each, medians\n\n", b.runs)
	var lat, up map[int]time.Duration
	var linuxStats fetch
	if len(ns) > 0 {
		if lat, up, linuxStats, err = b.forkLatency(ns); err != nil {
			benchproc.KillAll()
			fail(err)
		}
	}
	boot := map[int]time.Duration{}
	for _, n := range ns {
		if boot[n], err = b.coldBoot(n); err != nil {
			benchproc.KillAll()
			fail(err)
		}
	}
	if len(ns) > 0 {
		fmt.Println("Fork latency (sf_clone in a booted 1-vCPU 256 MiB Linux guest to all N clones running) against cold-booting N VMs to the same point")
		fmt.Println()
		fmt.Println("| N | fork to all N running | cold boot of N | fork / boot | target | fork to all N printing \"up\" | / boot |")
		fmt.Println("| --- | --- | --- | --- | --- | --- | --- |")
	}
	for _, n := range ns {
		target := ""
		if n == 4 {
			target = "≤ 0.1 (10× faster)"
		}
		fmt.Printf("| %d | %v | %v | %.3f | %s | %v | %.3f |\n", n, lat[n].Round(time.Millisecond), boot[n].Round(time.Millisecond),
			float64(lat[n])/float64(boot[n]), target, up[n].Round(time.Millisecond), float64(up[n])/float64(boot[n]))
	}
	fmt.Println()

	small, err := b.forkPause("64M")
	if err == nil {
		var large time.Duration
		if large, err = b.forkPause("1G"); err == nil {
			fmt.Println("The parent's pause for a fork from the host (forktest kernel, 1200 MiB guest)")
			fmt.Println()
			fmt.Println("| populated 64 MiB | populated 1 GiB | 1 GiB / 64 MiB | target |")
			fmt.Println("| --- | --- | --- | --- |")
			fmt.Printf("| %v | %v | %.2f | ≤ 2 |\n\n", small.Round(time.Microsecond), large.Round(time.Microsecond), float64(large)/float64(small))
		}
	}
	if err != nil {
		benchproc.KillAll()
		fail(err)
	}

	tiny, err := b.tinyFetch()
	if err != nil {
		benchproc.KillAll()
		fail(err)
	}
	fmt.Println("Pages per clone: fetched from the parent (through the memory server, or read from the parent's memory directly), filled locally (never populated or zero at the fork), and touched")
	fmt.Println()
	fmt.Println("| guest | faults | pages fetched | of those read directly | zero-filled locally | pages touched | fetched / touched |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- |")
	const touched = 16384 + 4096 // the pattern and the untouched region; code and stack add a few
	fmt.Printf("| forktest, 4 clones, 64 MiB pattern + 16 MiB never touched | %d | %d | %d | %d | ≥ %d | %.2f |\n",
		tiny.faults, tiny.fetched, tiny.direct, tiny.zero, touched, float64(tiny.fetched)/touched)
	if len(ns) > 0 {
		fmt.Printf("| Linux, %d clones (shell + sfctl) | %d | %d | %d | %d | %d (faults + prefetched) | — |\n",
			linuxStats.clones, linuxStats.faults, linuxStats.fetched, linuxStats.direct, linuxStats.zero, linuxStats.faults+linuxStats.prefetched)
	}
	fmt.Println()
	fmt.Printf("(run took %v)\n", time.Since(start).Round(time.Second))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

const linuxCmdline = "console=ttyS0 reboot=k panic=-1 pci=off quiet"

// cloneCrashed matches a clone's report that its guest or its VMM failed.
var cloneCrashed = regexp.MustCompile(`^sfvmm clone \d+: (error: |guest ended: (triple fault|reset|error))`)

// memtapRE matches a clone's statistics at exit.
var memtapRE = regexp.MustCompile(`^sfvmm clone \d+: memtap: (\d+) faults, (\d+) pages fetched, (\d+) zero-filled locally, (\d+) read from the parent directly, (\d+) prefetched`)

// fetch sums clones' memtap statistics.
type fetch struct{ clones, faults, fetched, zero, direct, prefetched uint64 }

func (f *fetch) add(m []string) {
	v := func(i int) uint64 { n, _ := strconv.ParseUint(m[i], 10, 64); return n }
	f.clones++
	f.faults += v(1)
	f.fetched += v(2)
	f.zero += v(3)
	f.direct += v(4)
	f.prefetched += v(5)
}

// perClone is f averaged over its clones.
func (f fetch) perClone() fetch {
	if f.clones == 0 {
		return f
	}
	n := f.clones
	return fetch{clones: n, faults: f.faults / n, fetched: f.fetched / n, zero: f.zero / n, direct: f.direct / n, prefetched: f.prefetched / n}
}

// forkLatency boots the Linux parent once; its script forks for each N,
// b.runs times. It returns the median latencies per N to all clones
// running and to all printing "up", and the average memtap statistics of
// the clones of the forks into 4 (or the last N).
func (b *bench) forkLatency(ns []int) (running, up map[int]time.Duration, stats fetch, err error) {
	var counts []string
	for r := 0; r < b.runs; r++ {
		for _, n := range ns {
			counts = append(counts, strconv.Itoa(n))
		}
	}
	script := "for n in " + strings.Join(counts, " ") + "; do sleep 1; echo forking $n; t=$(sfctl ticket $n); id=$(sfctl clone $t); " +
		"if [ $id != 0 ]; then echo up $n $id; sfctl exit; fi; sfctl join $t; echo joined $n; done"
	p, err := benchproc.Start(b.sfvmm, "run", "--kernel", b.kernel, "--initrd", b.initrd, "--memory", "256M",
		"--fork-capacity", "16", "--cmdline", linuxCmdline+` sfvmm.run="`+script+`"`)
	if err != nil {
		return nil, nil, fetch{}, err
	}
	defer p.Kill()
	lat, upLat := map[int][]time.Duration{}, map[int][]time.Duration{}
	from := 0
	for _, c := range counts {
		n, _ := strconv.Atoi(c)
		l, i, _, err := p.WaitLine(from, regexp.MustCompile(`^forking `+c+`$`), false, b.timeout, "the parent's fork")
		if err != nil {
			return nil, nil, fetch{}, err
		}
		lastRun, lastUp := l.At, l.At
		for id := 1; id <= n; id++ {
			re := regexp.MustCompile(fmt.Sprintf(`^sfvmm clone %d: running `, id))
			r, _, _, err := p.WaitLineUnless(i, re, true, cloneCrashed, b.timeout, fmt.Sprintf("clone %d of %d running", id, n))
			if err != nil {
				return nil, nil, fetch{}, err
			}
			re = regexp.MustCompile(fmt.Sprintf(`^\[clone %d\] up %d %d\s*$`, id, n, id))
			u, _, _, err := p.WaitLineUnless(i, re, false, cloneCrashed, b.timeout, fmt.Sprintf("clone %d of %d up", id, n))
			if err != nil {
				return nil, nil, fetch{}, err
			}
			if r.At.After(lastRun) {
				lastRun = r.At
			}
			if u.At.After(lastUp) {
				lastUp = u.At
			}
		}
		lat[n] = append(lat[n], lastRun.Sub(l.At))
		upLat[n] = append(upLat[n], lastUp.Sub(l.At))
		_, j, _, err := p.WaitLine(i, regexp.MustCompile(`^joined `+c+`$`), false, b.timeout, "the parent's join")
		if err != nil {
			return nil, nil, fetch{}, err
		}
		if n == 4 || (stats.clones == 0 && c == counts[len(counts)-1]) {
			for _, ln := range p.Lines(i, j) {
				if m := memtapRE.FindStringSubmatch(ln.Text); m != nil && ln.Stderr {
					stats.add(m)
				}
			}
		}
		from = j
	}
	running, up = map[int]time.Duration{}, map[int]time.Duration{}
	for n, ds := range lat {
		running[n], up[n] = median(ds), median(upLat[n])
	}
	return running, up, stats.perClone(), nil
}

// coldBoot starts n VMs of the same guest at once and returns the median
// over b.runs of the time until the last prints "up" from its init.
func (b *bench) coldBoot(n int) (time.Duration, error) {
	return b.rounds(fmt.Sprintf("cold boot of %d", n), func() (time.Duration, error) { return b.coldBootOnce(n) })
}

// rounds runs once b.runs times and returns the median of its results. A
// round that fails ends the benchmark: a crashed guest is a finding.
func (b *bench) rounds(what string, once func() (time.Duration, error)) (time.Duration, error) {
	var ds []time.Duration
	for len(ds) < b.runs {
		d, err := once()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		ds = append(ds, d)
	}
	return median(ds), nil
}

func (b *bench) coldBootOnce(n int) (time.Duration, error) {
	start := time.Now()
	var ps []*benchproc.Proc
	defer func() {
		for _, p := range ps {
			p.Kill()
		}
	}()
	for i := 0; i < n; i++ {
		p, err := benchproc.Start(b.sfvmm, "run", "--kernel", b.kernel, "--initrd", b.initrd, "--memory", "256M",
			"--cmdline", linuxCmdline+` sfvmm.run="echo up"`)
		if err != nil {
			return 0, err
		}
		ps = append(ps, p)
	}
	var last time.Time
	for _, p := range ps {
		l, _, _, err := p.WaitLine(0, regexp.MustCompile(`^up\s*$`), false, b.timeout, "cold boot")
		if err != nil {
			return 0, err
		}
		if l.At.After(last) {
			last = l.At
		}
	}
	return last.Sub(start), nil
}

// forkPause runs the forktest kernel with size bytes populated and forks
// it from the host b.runs times into one clone, returning the median pause
// the API reports.
func (b *bench) forkPause(size string) (time.Duration, error) {
	sock := filepath.Join(b.sockDir, "pause-"+size+".sock")
	p, err := benchproc.Start(b.sfvmm, "run", "--kernel", b.forktest, "--memory", "1200M", "--api-sock", sock,
		"--cmdline", "mode=ticker size="+size)
	if err != nil {
		return 0, err
	}
	defer p.Kill()
	if _, _, _, err := p.WaitLine(0, regexp.MustCompile(`^forktest: ticker id=0 n=1$`), false, b.timeout, "forktest fill "+size); err != nil {
		return 0, err
	}
	c := api.Dial(sock)
	defer c.Close()
	ctx := context.Background()
	return b.rounds("fork with "+size+" populated", func() (time.Duration, error) {
		from := p.Mark()
		info, err := c.Fork(ctx, api.ForkRequest{Clones: 1})
		if err != nil {
			return 0, err
		}
		_, _, _, err = p.WaitLineUnless(from, regexp.MustCompile(`^\[clone 1\] forktest: ticker id=1`), false, cloneCrashed, b.timeout, "the clone ticking")
		if kerr := c.Kill(ctx, info.Ticket); err == nil {
			err = kerr
		}
		return time.Duration(info.PausedNanos), err
	})
}

// tinyFetch runs forktest's fork mode and returns its clones' average
// memtap statistics.
func (b *bench) tinyFetch() (fetch, error) {
	p, err := benchproc.Start(b.sfvmm, "run", "--kernel", b.forktest, "--memory", "128M", "--cmdline", "mode=fork clones=4 size=64M")
	if err != nil {
		return fetch{}, err
	}
	defer p.Kill()
	if _, _, _, err := p.WaitLine(0, regexp.MustCompile(`^forktest: parent joined: all 4 clones exited, 0 without`), false, b.timeout, "forktest fork"); err != nil {
		return fetch{}, err
	}
	var f fetch
	for _, l := range p.Lines(0, p.Mark()) {
		if m := memtapRE.FindStringSubmatch(l.Text); m != nil && l.Stderr {
			f.add(m)
		}
	}
	if f.clones != 4 {
		return f, fmt.Errorf("statistics of %d clones, want 4:\n%s", f.clones, p.Tail(40))
	}
	return f.perClone(), nil
}
