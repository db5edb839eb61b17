// Command snapshot benchmarks snapshot and restore of a running Linux guest
// in sfvmm against QEMU (qemu-system-x86_64 -enable-kvm, saving through QMP
// migration to a file and restoring with -incoming) on the same /dev/kvm.
// It prints a Markdown table. Run it where /dev/kvm works, e.g.
//
//	make bench-snapshot   (= tests/kvmbox/kvmbox.sh -- build/bench/snapshot)
//
// For each RAM size (-sizes, MiB) the same 1-vCPU guest boots in both VMMs:
// Debian's kernel with sfvmm's test initramfs, whose sfvmm.run command
// fills about -fill percent of RAM with random data on a tmpfs (bounded by
// what the guest has available), prints "fill-done", then prints "tick N"
// every -tick seconds. Then:
//
//   - sfvmm: PUT /snapshot on the control API (the guest resumes after it);
//     the bench records the descriptor size, the memory written and the
//     pause, kills the VM, and times `sfvmm restore DIR` from process start
//     to the first tick the restored guest prints, next to sfvmm's own
//     "restored DIR in D".
//   - QEMU: stop + migrate to "exec:cat > FILE" (the stopped save, the fair
//     peer of sfvmm's snapshot), cont, then a live (pre-copy) migrate to a
//     second file; it restores the live file with -incoming "exec:cat FILE"
//     and times process start to the first tick, and to QMP query-status
//     "running".
//
// "First tick" is when the bench reads the line: an upper bound on the
// restored guest's first instruction, late by up to one tick period. The
// bench also checks that the restored guest continues where the snapshot
// was taken (its first tick follows the last one printed before the
// snapshot). Temporary files go to build/bench/tmp (guest-RAM-sized files
// need disk, not the sandbox's small /tmp) and are removed afterwards;
// control sockets go to a directory under $TMPDIR or /tmp.
// Times are medians of -n runs; in the nested sandbox absolute times are
// slow, so read the ratios. The smallest default size is 128 MiB: Debian's
// kernel asks for about 80 MiB to decompress itself (its init_size), and a
// 64 MiB guest boots in neither VMM (sfvmm refuses it, QEMU prints
// nothing).
package main

import (
	"github.com/sfvmm/sfvmm/tests/bench/internal/benchproc"

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
)

// bench is one invocation's configuration.
type bench struct {
	sfvmm, qemu    string
	kernel, initrd string
	tmp            string // snapshots and migration files
	sockDir        string // control sockets: 9p, which holds the checkout in the sandbox, cannot bind them
	fillPct        int
	tick           string // guest sleep between ticks, in seconds
	bootTimeout    time.Duration
	opTimeout      time.Duration
	notes          []string
}

func (b *bench) notef(format string, a ...any) {
	b.notes = append(b.notes, fmt.Sprintf(format, a...))
}

// cmdline is the guest command line for both VMMs. The sfvmm.run command
// cannot hold a double quote. It fills RAM from a 1 MiB random block
// (random: no VMM can skip it as zero pages; one block: /dev/urandom under
// TCG is slow), leaving 16 MiB of what the guest has available.
func (b *bench) cmdline(memMiB int) string {
	n := memMiB * b.fillPct / 100
	run := strings.Join([]string{
		"mkdir -p /fill",
		"mount -t tmpfs -o size=100% tmpfs /fill",
		"A=$(awk '/^MemAvailable:/{print int($2/1024)}' /proc/meminfo)",
		"N=" + strconv.Itoa(n),
		"[ $N -gt $((A-16)) ] && N=$((A-16))",
		"dd if=/dev/urandom of=/fill/r bs=1M count=1 2>/dev/null",
		"i=0",
		"while [ $i -lt $N ]; do cat /fill/r; i=$((i+1)); done > /fill/f",
		"echo fill-done N=$N MiB avail=$A MiB",
		"i=0",
		"while true; do i=$((i+1)); echo tick $i; sleep " + b.tick + "; done",
	}, "; ")
	return `console=ttyS0 reboot=k panic=-1 pci=off quiet sfvmm.run="` + run + `"`
}

var (
	fillRE = regexp.MustCompile(`^fill-done N=(-?\d+) MiB avail=(\d+) MiB$`)
	tickRE = regexp.MustCompile(`^tick (\d+)$`)
)

// fill is what the guest reported after filling its RAM.
type fill struct{ filledMiB, availMiB int }

func waitFill(p *benchproc.Proc, timeout time.Duration, what string) (fill, error) {
	_, _, m, err := p.WaitLine(0, fillRE, false, timeout, what+": boot and fill RAM")
	if err != nil {
		return fill{}, err
	}
	var f fill
	f.filledMiB, _ = strconv.Atoi(m[1])
	f.availMiB, _ = strconv.Atoi(m[2])
	if _, err := nextTick(p, 0, 60*time.Second, what+": first tick after the fill"); err != nil {
		return f, err
	}
	return f, nil
}

// tickCheck holds tick numbers that show whether a restored guest goes on
// from the snapshot: before < restored ≤ after+1.
type tickCheck struct {
	// before is the last tick printed before the save began.
	before int
	// after is the last tick the saved state can have begun to print. A
	// save that cuts a tick line in two leaves it whole in neither output,
	// hence the +1 above.
	after int
	// restored is the first tick the restored guest printed.
	restored int
}

func (t tickCheck) ok() bool { return t.before < t.restored && t.restored <= t.after+1 }

func (t tickCheck) String() string {
	return fmt.Sprintf("ticks: last before the save %d, first after restore %d (want %d to %d)",
		t.before, t.restored, t.before+1, t.after+1)
}

// lastTick is the highest tick among the first n lines p printed.
func lastTick(p *benchproc.Proc, n int) int {
	last := 0
	for _, l := range p.Lines(0, n) {
		if m := tickRE.FindStringSubmatch(l.Text); m != nil && !l.Stderr {
			last, _ = strconv.Atoi(m[1])
		}
	}
	return last
}

// nextTick waits for the first tick from line from on and returns its number.
func nextTick(p *benchproc.Proc, from int, timeout time.Duration, what string) (int, error) {
	_, _, m, err := p.WaitLine(from, tickRE, false, timeout, what)
	if err != nil {
		return 0, err
	}
	n, _ := strconv.Atoi(m[1])
	return n, nil
}

// fileSizes returns a file's apparent size and the bytes it occupies.
func fileSizes(path string) (size, disk int64, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, err
	}
	disk = -1
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		disk = st.Blocks * 512
	}
	return fi.Size(), disk, nil
}

// freeBytes is the space left on the file system holding dir.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

type row struct {
	memMiB int
	sf     sfvmmResult
	q      qemuResult
}

func main() {
	root := flag.String("root", ".", "repository root")
	sizes := flag.String("sizes", "128,256,1024", "guest RAM sizes in MiB, comma-separated (Debian's kernel needs more than 64)")
	n := flag.Int("n", 1, "runs per size (the table shows medians)")
	b := &bench{}
	flag.StringVar(&b.sfvmm, "sfvmm", "sfvmm", "sfvmm binary")
	flag.StringVar(&b.qemu, "qemu", "qemu-system-x86_64", "QEMU binary")
	flag.StringVar(&b.tmp, "tmp", "", "directory for snapshots and migration files (default ROOT/build/bench/tmp)")
	flag.IntVar(&b.fillPct, "fill", 60, "percent of guest RAM the guest fills before the snapshot")
	flag.StringVar(&b.tick, "tick", "0.05", "seconds between the guest's ticks (the resolution of time to first tick)")
	flag.DurationVar(&b.bootTimeout, "boot-timeout", 15*time.Minute, "bound on a guest's boot and fill")
	flag.DurationVar(&b.opTimeout, "op-timeout", 10*time.Minute, "bound on one snapshot, save or restore")
	flag.Parse()

	var ms []int
	for _, s := range strings.Split(*sizes, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || v < 32 {
			fmt.Fprintf(os.Stderr, "bench: -sizes: %q is not a size in MiB (at least 32)\n", s)
			os.Exit(2)
		}
		ms = append(ms, v)
	}
	if *n < 1 {
		fmt.Fprintln(os.Stderr, "bench: -n must be at least 1")
		os.Exit(2)
	}
	if _, err := strconv.ParseFloat(b.tick, 64); err != nil {
		fmt.Fprintf(os.Stderr, "bench: -tick %q: want seconds\n", b.tick)
		os.Exit(2)
	}
	if b.tmp == "" {
		b.tmp = filepath.Join(*root, "build/bench/tmp")
	}
	var err error
	if b.tmp, err = filepath.Abs(b.tmp); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	b.initrd = filepath.Join(*root, "build/kernels/initramfs.cpio")
	if b.initrd, err = filepath.Abs(b.initrd); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "bench: %v: stopping\n", s)
		benchproc.KillAll()
		os.RemoveAll(b.tmp)
		os.Exit(130)
	}()

	rows, err := run(b, ms, *n)
	benchproc.KillAll()
	os.RemoveAll(b.tmp)
	if len(rows) > 0 {
		printTable(b, rows, *n)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(b *bench, sizes []int, n int) ([]row, error) {
	b.kernel = os.Getenv("SFVMM_LINUX_KERNEL")
	if b.kernel == "" {
		return nil, fmt.Errorf("SFVMM_LINUX_KERNEL is not set (run through tests/kvmbox)")
	}
	for _, f := range []string{b.kernel, b.initrd} {
		if _, err := os.Stat(f); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(b.tmp, 0o755); err != nil {
		return nil, err
	}
	var err error
	if b.sockDir, err = os.MkdirTemp("", "bench-snapshot-"); err != nil {
		return nil, err
	}
	defer os.RemoveAll(b.sockDir)
	var rows []row
	for _, m := range sizes {
		// At most three guest-sized files exist at once (sfvmm's, then
		// QEMU's two) but only one at a time per VMM; ask for two.
		need := int64(2*m+256) << 20
		free, err := freeBytes(b.tmp)
		if err != nil {
			return rows, err
		}
		if free < need {
			return rows, fmt.Errorf("%d MiB guest: %s has %d MiB free, want at least %d MiB", m, b.tmp, free>>20, need>>20)
		}
		var sfs []sfvmmResult
		var qs []qemuResult
		for i := 0; i < n; i++ {
			fmt.Fprintf(os.Stderr, "bench: %d MiB, run %d/%d: sfvmm\n", m, i+1, n)
			sf, err := benchSfvmm(b, m)
			if err != nil {
				return rows, fmt.Errorf("sfvmm, %d MiB: %w", m, err)
			}
			if !sf.ticks.ok() {
				b.notef("sfvmm %d MiB, run %d: the restored guest does not go on from the snapshot: %v", m, i+1, sf.ticks)
			}
			fmt.Fprintf(os.Stderr, "bench: %d MiB, run %d/%d: qemu\n", m, i+1, n)
			q, err := benchQEMU(b, m)
			if err != nil {
				return rows, fmt.Errorf("qemu, %d MiB: %w", m, err)
			}
			if !q.ticks.ok() {
				b.notef("qemu %d MiB, run %d: the restored guest does not go on from the snapshot: %v", m, i+1, q.ticks)
			}
			sfs, qs = append(sfs, sf), append(qs, q)
		}
		rows = append(rows, row{memMiB: m, sf: medianSfvmm(sfs), q: medianQEMU(qs)})
	}
	return rows, nil
}

// median of each figure separately.
func med[T int64 | uint64 | int | time.Duration](xs []T) T {
	s := append([]T(nil), xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func pick[R, T any](rs []R, f func(R) T) []T {
	out := make([]T, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

func medianSfvmm(rs []sfvmmResult) sfvmmResult {
	r := rs[0] // fill and ticks of the first run
	r.descBytes = med(pick(rs, func(x sfvmmResult) int64 { return x.descBytes }))
	r.memBytes = med(pick(rs, func(x sfvmmResult) int64 { return x.memBytes }))
	r.memFileDisk = med(pick(rs, func(x sfvmmResult) int64 { return x.memFileDisk }))
	r.paused = med(pick(rs, func(x sfvmmResult) time.Duration { return x.paused }))
	r.write = med(pick(rs, func(x sfvmmResult) time.Duration { return x.write }))
	r.restoreOwn = med(pick(rs, func(x sfvmmResult) time.Duration { return x.restoreOwn }))
	r.restoreTick = med(pick(rs, func(x sfvmmResult) time.Duration { return x.restoreTick }))
	return r
}

func medianQEMU(rs []qemuResult) qemuResult {
	r := rs[0]
	r.stoppedSave = med(pick(rs, func(x qemuResult) time.Duration { return x.stoppedSave }))
	r.stoppedFile = med(pick(rs, func(x qemuResult) int64 { return x.stoppedFile }))
	r.liveWall = med(pick(rs, func(x qemuResult) time.Duration { return x.liveWall }))
	r.live.DowntimeMs = med(pick(rs, func(x qemuResult) int64 { return x.live.DowntimeMs }))
	r.live.TotalTimeMs = med(pick(rs, func(x qemuResult) int64 { return x.live.TotalTimeMs }))
	r.liveFile = med(pick(rs, func(x qemuResult) int64 { return x.liveFile }))
	r.restoreTick = med(pick(rs, func(x qemuResult) time.Duration { return x.restoreTick }))
	r.restoreRun = med(pick(rs, func(x qemuResult) time.Duration { return x.restoreRun }))
	return r
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// descriptorTarget: at most 64 KiB at 1 GiB, and growth with RAM no more
// than the uncompressed page bitmap's (one bit per 4 KiB page), measured
// against the smallest size in the run.
func descriptorTarget(r, smallest row) string {
	var parts []string
	ok := true
	if r.memMiB >= 1024 {
		limit := int64(64<<10) * int64(r.memMiB) / 1024
		ok = r.sf.descBytes <= limit
		parts = append(parts, fmt.Sprintf("≤ %d KiB", limit>>10))
	}
	if r.memMiB != smallest.memMiB {
		grow := r.sf.descBytes - smallest.sf.descBytes
		bitmap := int64(r.memMiB-smallest.memMiB) << 20 / 4096 / 8
		ok = ok && grow <= bitmap
		parts = append(parts, fmt.Sprintf("growth from %d MiB %+d B ≤ raw bitmap's %d B", smallest.memMiB, grow, bitmap))
	}
	if len(parts) == 0 {
		return "(reference size)"
	}
	verdict := "ok"
	if !ok {
		verdict = "**missed**"
	}
	return strings.Join(parts, "; ") + ": " + verdict
}

func printTable(b *bench, rows []row, n int) {
	fmt.Printf("Snapshot and restore of a 1-vCPU Linux guest with ~%d%% of its RAM filled (median of %d run(s) per size; tick period %s s)\n\n", b.fillPct, n, b.tick)
	fmt.Println("| RAM | guest filled | sfvmm descriptor | sfvmm memory file (populated) | QEMU state file (stopped / live) | sfvmm pause for snapshot (of which writing) | QEMU live downtime / stopped-save time | sfvmm restore: own figure / to first tick | QEMU restore: to first tick / to running | ratio restore sfvmm/QEMU to first tick (target ≤ 0.2) | descriptor target |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	smallest := rows[0]
	for _, r := range rows {
		if r.memMiB < smallest.memMiB {
			smallest = r
		}
	}
	for _, r := range rows {
		ratio := r.sf.restoreTick.Seconds() / r.q.restoreTick.Seconds()
		verdict := "ok"
		if ratio > 0.2 {
			verdict = "**missed**"
		}
		fmt.Printf("| %d MiB | %d MiB (of %d available) | %d B | %d B (%s, %d pages) | %d / %d B | %s (%s) | %d ms / %s | %s / %s | %s / %s | %.3f %s | %s |\n",
			r.memMiB, r.sf.fill.filledMiB, r.sf.fill.availMiB,
			r.sf.descBytes, r.sf.memBytes, mib(r.sf.memBytes), r.sf.pages,
			r.q.stoppedFile, r.q.liveFile,
			ms(r.sf.paused), ms(r.sf.write),
			r.q.live.DowntimeMs, ms(r.q.stoppedSave),
			ms(r.sf.restoreOwn), ms(r.sf.restoreTick),
			ms(r.q.restoreTick), ms(r.q.restoreRun),
			ratio, verdict, descriptorTarget(r, smallest))
	}
	fmt.Println()
	fmt.Println("Notes:")
	fmt.Printf("- QEMU: `%s -enable-kvm -cpu host -M pc -smp 1 -nodefaults`, migration max-bandwidth raised to %d GiB/s, default downtime limit; the live save is pre-copy, so the guest runs during most of it.\n", b.qemu, qemuMaxBandwidth>>30)
	for _, r := range rows {
		fmt.Printf("- %d MiB: QEMU live migration took %d ms in all (QMP total-time; %s wall); sfvmm memory file %s apparent, %s on disk; sfvmm %v; QEMU %v.\n",
			r.memMiB, r.q.live.TotalTimeMs, ms(r.q.liveWall), mib(r.sf.memFileSize), mib(r.sf.memFileDisk), r.sf.ticks, r.q.ticks)
		if r.q.fill != r.sf.fill {
			fmt.Printf("- %d MiB: the QEMU guest filled %d MiB (of %d available), the sfvmm guest %d MiB.\n",
				r.memMiB, r.q.fill.filledMiB, r.q.fill.availMiB, r.sf.fill.filledMiB)
		}
	}
	for _, s := range b.notes {
		fmt.Println("-", s)
	}
}
