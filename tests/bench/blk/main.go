// Command blk is issue 12's benchmark: a Linux guest's disk throughput on
// sfvmm's virtio-blk, on each of its transports (--virtio pci and mmio),
// against QEMU's virtio-blk-pci (qemu-system-x86_64 -enable-kvm, the
// reference) and against QEMU's virtio-blk on virtio-mmio (-M microvm), on
// the same raw image. It prints Markdown tables. Run it where /dev/kvm
// works, e.g.
//
//	make bench-blk   (= tests/kvmbox/kvmbox.sh -- build/bench/blk)
//
// Each VMM boots Debian's kernel (1 vCPU, 256 MiB) with sfvmm's test
// initramfs, to which the bench appends the virtio modules and
// kernels/blkbench. The guest's one script runs blkbench on /dev/vda in
// four modes: sequential writes and reads of 1 MiB, then random writes
// and reads of 4 KiB, each with O_DIRECT (the guest's page cache stays
// out of it) and one request in flight at a time. The boots take turns,
// each VMM in turn, -reps rounds; the table shows each mode's median
// rate, and each ratio as the median of the rounds' ratios.
//
// sfvmm serves the requests as -notify says (its --notify: auto, which
// with the guest's one vCPU is exit on a one-CPU host and ioeventfd on a
// larger one, or either forced). With -spin a process in the guest spins
// beside the I/O, and a last table shows how much of the guest's CPU the
// I/O left it: what a device thread of its own buys.
//
// Both VMMs go through the sandbox's page cache: QEMU's default cache
// mode (writeback) and sfvmm's plain reads and writes, on an image in the
// sandbox's tmpfs. So the figures are the cost of each VMM's request path
// (exits, queue handling, interrupts), not of a disk.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sfvmm/sfvmm/tests/bench/internal/benchproc"
	"github.com/sfvmm/sfvmm/tests/guestmod"
	sfvmm "github.com/sfvmm/sfvmm/vmm"
)

// modules are the guest kernel's drivers the guest loads (each after the
// modules it depends on, from modules.dep): virtio-mmio and virtio-pci
// for the two transports, and the block driver. Each VMM's guest loads
// all of them; the bus it lacks finds no device.
var modules = []string{"drivers/virtio/virtio_mmio", "drivers/virtio/virtio_pci", "drivers/block/virtio_blk"}

// A mode is one blkbench run in the guest script.
type mode struct {
	name      string
	bs, count int
}

// A sample is what one blkbench line reported; spins is the guest's
// spinning process's count (-spin).
type sample struct {
	ops, bytes, ns, spins int64
}

func (s sample) mbps() float64 { return float64(s.bytes) / 1e6 / (float64(s.ns) / 1e9) }
func (s sample) iops() float64 { return float64(s.ops) / (float64(s.ns) / 1e9) }

// spinRate is the guest's spinning process's count per µs while the
// operations ran.
func (s sample) spinRate() float64 { return float64(s.spins) / (float64(s.ns) / 1e3) }

// A vmm is one of the two VMMs under test: how to boot the guest with the
// image as its disk.
type vmm struct {
	name string
	cmd  func(kernel, initrd, img, script string) []string
}

const guestCmdline = "console=ttyS0 panic=-1 quiet"

var vmms = []vmm{
	{"sfvmm-pci", func(kernel, initrd, img, script string) []string {
		return []string{"sfvmm", "run", "--virtio", "pci", "--memory", "256M", "--disk", img, "--kernel", kernel, "--initrd", initrd,
			"--cmdline", guestCmdline + ` reboot=k sfvmm.run="` + script + `"`}
	}},
	{"sfvmm-mmio", func(kernel, initrd, img, script string) []string {
		// Without a PCI bus.
		return []string{"sfvmm", "run", "--virtio", "mmio", "--memory", "256M", "--disk", img, "--kernel", kernel, "--initrd", initrd,
			"--cmdline", guestCmdline + ` reboot=k pci=off sfvmm.run="` + script + `"`}
	}},
	{"QEMU", func(kernel, initrd, img, script string) []string {
		return []string{"qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-nographic", "-no-reboot",
			"-M", "pc", "-m", "256", "-kernel", kernel, "-initrd", initrd,
			"-append", guestCmdline + ` sfvmm.run="` + script + `"`,
			"-drive", "file=" + img + ",if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0"}
	}},
	// The same transport as sfvmm's: microvm's virtio-mmio devices, which
	// its ACPI tables announce as sfvmm's do. A driver of virtio-mmio
	// reads and acknowledges the interrupt status with two MMIO exits per
	// interrupt, which virtio-pci with MSI-X does not need.
	{"QEMU-mmio", func(kernel, initrd, img, script string) []string {
		return []string{"qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-nographic", "-no-reboot",
			"-M", "microvm,acpi=on", "-m", "256", "-kernel", kernel, "-initrd", initrd,
			"-append", guestCmdline + ` sfvmm.run="` + script + `"`,
			"-drive", "file=" + img + ",if=none,id=d0,format=raw", "-device", "virtio-blk-device,drive=d0"}
	}},
}

// sfvmmNotify is sfvmm's --notify (-notify).
var sfvmmNotify sfvmm.Notify

var lineRE = regexp.MustCompile(`blkbench (\w+) bs=(\d+) ops=(\d+) bytes=(\d+) ns=(\d+)(?: spins=(\d+))?`)

func main() {
	root := flag.String("root", ".", "repository root")
	reps := flag.Int("reps", 3, "boots of each VMM, taking turns (the table shows medians)")
	imgMiB := flag.Int("image-mib", 256, "size of the disk image in MiB")
	seqCount := flag.Int("seq-count", 64, "1 MiB requests per sequential mode")
	randCount := flag.Int("rand-count", 4000, "4 KiB requests per random mode")
	timeout := flag.Duration("timeout", 5*time.Minute, "limit for one boot with its four modes")
	only := flag.String("vmms", "", "the VMMs to run, comma-separated (sfvmm-pci,sfvmm-mmio,QEMU,QEMU-mmio; \"\": all)")
	notify := flag.String("notify", "auto", "sfvmm's --notify: auto, ioeventfd or exit")
	spin := flag.Bool("spin", false, "run a spinning process in the guest beside each mode, and show its rate: the guest CPU the I/O leaves to other work")
	flag.Parse()
	if *only != "" {
		vmms = slices.DeleteFunc(vmms, func(v vmm) bool { return !slices.Contains(strings.Split(*only, ","), v.name) })
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		benchproc.KillAll()
		os.Exit(1)
	}()
	modes := []mode{
		{"seqwrite", 1 << 20, *seqCount},
		{"seqread", 1 << 20, *seqCount},
		{"randwrite", 4096, *randCount},
		{"randread", 4096, *randCount},
	}
	var err error
	if sfvmmNotify, err = sfvmm.ParseNotify(*notify); err != nil {
		fmt.Fprintln(os.Stderr, "bench: -notify", err)
		os.Exit(2)
	}
	if err := run(*root, *reps, *imgMiB, modes, *spin, *timeout); err != nil {
		benchproc.KillAll()
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(root string, reps, imgMiB int, modes []mode, spin bool, timeout time.Duration) error {
	kernel := os.Getenv("SFVMM_LINUX_KERNEL")
	if kernel == "" {
		return fmt.Errorf("SFVMM_LINUX_KERNEL is not set (run through tests/kvmbox)")
	}
	dir, err := os.MkdirTemp("", "bench-blk-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	initrd, names, err := guestInitrd(kernel, filepath.Join(root, "build/kernels"), dir)
	if err != nil {
		return err
	}
	img := filepath.Join(dir, "disk.img")
	if err := makeImage(img, imgMiB); err != nil {
		return err
	}
	var script []string
	for _, n := range names {
		script = append(script, "insmod /m/"+n+".ko")
	}
	for _, m := range modes {
		cmd := fmt.Sprintf("blkbench /dev/vda %s %d %d", m.name, m.bs, m.count)
		if spin {
			cmd += " spin"
		}
		script = append(script, cmd)
	}

	// samples[vmm][mode] holds one sample per boot.
	samples := map[string]map[string][]sample{}
	start := time.Now()
	for rep := range reps {
		for _, v := range vmms {
			got, err := boot(v, kernel, initrd, img, strings.Join(script, " && "), modes, timeout)
			if err != nil {
				return fmt.Errorf("%s, boot %d: %w", v.name, rep+1, err)
			}
			if samples[v.name] == nil {
				samples[v.name] = map[string][]sample{}
			}
			for _, m := range modes {
				samples[v.name][m.name] = append(samples[v.name][m.name], got[m.name])
			}
			fmt.Fprintf(os.Stderr, "bench: %s boot %d done (%v since start)\n", v.name, rep+1, time.Since(start).Round(time.Second))
		}
	}

	qemuVersion, err := exec.Command("qemu-system-x86_64", "--version").Output()
	if err != nil {
		return fmt.Errorf("qemu-system-x86_64 --version: %w", err)
	}
	fmt.Printf("Sandbox: nested KVM inside a QEMU TCG guest (CPUs: %d): absolute figures are slow and noisy, read the ratios. "+
		"Reference: %s -enable-kvm -cpu host -M pc, virtio-blk-pci, default cache mode (writeback, through the sandbox's page cache, "+
		"as sfvmm's reads and writes go). Guest: %s, 1 vCPU, 256 MiB; image: %d MiB raw on the sandbox's tmpfs. "+
		"blkbench in the guest: O_DIRECT, one request at a time, writes end with fsync (timed). Rounds, each a boot of each VMM in turn: %d; "+
		"the table shows each VMM's median rate, and for each ratio the median of the rounds' ratios.\n\n",
		runtime.NumCPU(), firstLine(qemuVersion), filepath.Base(kernel), imgMiB, reps)
	fmt.Printf("sfvmm-pci is sfvmm --virtio pci (virtio-pci, MSI-X), sfvmm-mmio is sfvmm --virtio mmio, both --notify %s "+
		"(here: %s); QEMU is QEMU -M pc with virtio-blk-pci (MSI-X), QEMU-mmio is QEMU -M microvm with virtio-blk-device (virtio-mmio).\n",
		sfvmmNotify, sfvmmNotify.Settle(runtime.GOMAXPROCS(0), 1)) // as sfvmm settles it, in the same sandbox
	fmt.Println()
	vmmNames := make([]string, len(vmms))
	for i, v := range vmms {
		vmmNames[i] = v.name
	}
	fmt.Printf("| mode | %s | sfvmm-pci/QEMU | sfvmm-mmio/QEMU | sfvmm-mmio/QEMU-mmio | target |\n", strings.Join(vmmNames, " MB/s (IOPS) | ")+" MB/s (IOPS)")
	fmt.Println("|---|" + strings.Repeat("---|", len(vmms)+4))
	for _, m := range modes {
		of := func(name string) []sample { return samples[name][m.name] }
		fmt.Printf("| %s, %s × %d |", m.name, size(m.bs), m.count)
		for _, n := range vmmNames {
			fmt.Printf(" %.1f (%.0f) |", median(of(n), sample.mbps), median(of(n), sample.iops))
		}
		fmt.Printf(" %s | %s | %s | ≥ 1 (sfvmm-pci/QEMU) |\n", pairedRatio(of("sfvmm-pci"), of("QEMU")), pairedRatio(of("sfvmm-mmio"), of("QEMU")),
			pairedRatio(of("sfvmm-mmio"), of("QEMU-mmio")))
	}
	fmt.Println()
	table("Each boot's MB/s, in the order they ran (the spread is the sandbox's noise):", vmmNames, modes,
		rates, samples)
	if spin {
		fmt.Println()
		table("The guest's spinning process beside each mode, counts per µs (median over the boots; the higher, the more of the guest's CPU the I/O left it):",
			vmmNames, modes, func(ss []sample) string { return fmt.Sprintf("%.1f", median(ss, sample.spinRate)) }, samples)
	}
	fmt.Printf("\nTotal: %v for %d boots.\n", time.Since(start).Round(time.Second), reps*len(vmms))
	return nil
}

// table prints, under the title, a table of each mode (rows) and VMM
// (columns) whose cells are cell of that VMM's samples of that mode.
func table(title string, vmmNames []string, modes []mode, cell func([]sample) string, samples map[string]map[string][]sample) {
	fmt.Println(title)
	fmt.Println()
	fmt.Printf("| mode | %s |\n", strings.Join(vmmNames, " | "))
	fmt.Println("|---|" + strings.Repeat("---|", len(vmmNames)))
	for _, m := range modes {
		fmt.Printf("| %s |", m.name)
		for _, n := range vmmNames {
			fmt.Printf(" %s |", cell(samples[n][m.name]))
		}
		fmt.Println()
	}
}

// boot runs the guest once under v and returns its blkbench samples by
// mode.
func boot(v vmm, kernel, initrd, img, script string, modes []mode, timeout time.Duration) (map[string]sample, error) {
	args := v.cmd(kernel, initrd, img, script)
	if args[0] == "sfvmm" {
		args = slices.Insert(args, 2, "--notify", sfvmmNotify.String())
	}
	p, err := benchproc.Start(args[0], args[1:]...)
	if err != nil {
		return nil, err
	}
	exited, werr := p.ExitedWithin(timeout)
	if !exited {
		p.Kill()
		return nil, fmt.Errorf("still running after %v:\n%s", timeout, p.Tail(30))
	}
	if werr != nil {
		return nil, fmt.Errorf("%v:\n%s", werr, p.Tail(30))
	}
	got := map[string]sample{}
	for _, l := range p.Lines(0, p.Mark()) {
		m := lineRE.FindStringSubmatch(l.Text)
		if m == nil {
			continue
		}
		var n [5]int64
		for i := range n {
			n[i], _ = strconv.ParseInt(m[i+2], 10, 64) // spins: 0 without -spin
		}
		got[m[1]] = sample{ops: n[1], bytes: n[2], ns: n[3], spins: n[4]}
	}
	for _, m := range modes {
		if s, ok := got[m.name]; !ok || s.ns <= 0 {
			return nil, fmt.Errorf("no blkbench result for %s:\n%s", m.name, p.Tail(30))
		}
	}
	return got, nil
}

// guestInitrd writes, into dir, sfvmm's test initramfs from kernels with
// a second archive appended (Linux unpacks concatenated archives): the
// guest kernel's modules as /m/NAME.ko and blkbench as /bin/blkbench. It
// returns the initrd's path and the modules' names in load order.
func guestInitrd(kernel, kernels, dir string) (string, []string, error) {
	paths, err := loadOrder(filepath.Join(guestmod.Dir(kernel), "modules.dep"), modules)
	if err != nil {
		return "", nil, err
	}
	tool, err := os.ReadFile(filepath.Join(kernels, "blkbench"))
	if err != nil {
		return "", nil, fmt.Errorf("%w (make -C kernels all builds it)", err)
	}
	var mods, names []string
	for _, p := range paths {
		m := strings.TrimSuffix(strings.TrimPrefix(p, "kernel/"), ".ko")
		mods = append(mods, m)
		names = append(names, filepath.Base(m))
	}
	out := filepath.Join(dir, "initrd.cpio")
	err = guestmod.Append(filepath.Join(kernels, "initramfs.cpio"), kernel, out, mods,
		guestmod.File{Name: "bin/blkbench", Mode: 0o755, Data: tool})
	return out, names, err
}

// loadOrder returns the modules mods (paths under kernel/, without .ko)
// and those they depend on, as paths relative to the modules directory,
// each after its dependencies, from depmod's modules.dep ("mod.ko: dep.ko
// ..."). It fails for a module the kernel does not have, or has
// compressed.
func loadOrder(depFile string, mods []string) ([]string, error) {
	b, err := os.ReadFile(depFile)
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		mod, rest, ok := strings.Cut(line, ":")
		if ok {
			deps[mod] = strings.Fields(rest)
		}
	}
	var order []string
	var visit func(string) error
	visit = func(m string) error {
		if slices.Contains(order, m) {
			return nil
		}
		ds, ok := deps[m]
		if !ok {
			return fmt.Errorf("%s: no module %s", depFile, m)
		}
		for _, d := range ds {
			if err := visit(d); err != nil {
				return err
			}
		}
		order = append(order, m)
		return nil
	}
	for _, m := range mods {
		if err := visit("kernel/" + m + ".ko"); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// makeImage writes a raw image of mib MiB holding non-zero data, so that
// no read is of a hole.
func makeImage(path string, mib int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	chunk := make([]byte, 1<<20)
	for i := range mib {
		for j := range chunk {
			chunk[j] = byte(j*131+i) | 1
		}
		if _, err := f.Write(chunk); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// median is the median of f over ss.
func median(ss []sample, f func(sample) float64) float64 {
	vs := make([]float64, len(ss))
	for i, s := range ss {
		vs[i] = f(s)
	}
	return medianOf(vs)
}

// medianOf is the median of vs (the mean of the middle two for an even
// count; 0 for none).
func medianOf(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	vs = slices.Sorted(slices.Values(vs))
	n := len(vs)
	if n%2 == 1 {
		return vs[n/2]
	}
	return (vs[n/2-1] + vs[n/2]) / 2
}

// pairedRatio is the median, over the rounds, of a's rate over b's in the
// same round, or "–" where either VMM did not run (-vmms). A round's
// boots run back to back, so the sandbox's drift cancels out of each
// round's ratio: in a two-CPU sandbox whole rounds ran at half or twice
// the speed of others, and the medians of the two columns, taken apart,
// could come from different rounds.
func pairedRatio(a, b []sample) string {
	if len(a) == 0 || len(b) == 0 {
		return "–"
	}
	rs := make([]float64, min(len(a), len(b)))
	for i := range rs {
		rs[i] = a[i].mbps() / b[i].mbps()
	}
	return fmt.Sprintf("%.2f", medianOf(rs))
}

func rates(ss []sample) string {
	var parts []string
	for _, s := range ss {
		parts = append(parts, fmt.Sprintf("%.1f", s.mbps()))
	}
	return strings.Join(parts, ", ")
}

func size(bs int) string {
	if bs%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", bs>>20)
	}
	return fmt.Sprintf("%d KiB", bs>>10)
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(s)
}
