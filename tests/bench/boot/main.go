// Command boot is issue 2's benchmark: process start to exit of sfvmm and of
// QEMU (qemu-system-x86_64 -enable-kvm, the reference a user would otherwise
// pick) booting the same guests on the same /dev/kvm, and sfvmm's memory
// overhead. It prints a Markdown table. Run it where /dev/kvm works, e.g.
//
//	make bench-boot   (= go run ./tests/kvmbox -- build/bench/boot)
//
// Times are medians of -n runs; in the nested sandbox absolute times are
// slow and noisy, so read the ratios.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

type result struct {
	wall time.Duration
	out  string
	code int
}

func runOnce(name string, args ...string) (result, error) {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	r := result{wall: time.Since(start), out: out.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			return r, fmt.Errorf("%s: %w", name, err)
		}
		r.code = ee.ExitCode()
	}
	return r, nil
}

// median runs the command n times in a row, checks each run printed want
// and ended with code, and returns the median run. Each command's runs
// follow each other rather than take turns with the other VMM's: in the
// nested sandbox a process started after a different one runs cold
// (QEMU's TCG translates the sandbox's code afresh), which hit sfvmm's
// 0.2 s hello far harder than QEMU's 1.8 s (0.112 against 0.095 in turns,
// with or without a pause between runs; and a pause let the sandbox go
// idle, which is when QEMU 7.2 loses its timer interrupts and stalls).
func median(n int, want string, code int, name string, args ...string) (result, error) {
	var rs []result
	for range n {
		r, err := runOnce(name, args...)
		if err != nil {
			return r, err
		}
		if !strings.Contains(r.out, want) || r.code != code {
			return r, fmt.Errorf("%s %s: exit %d, output lacks %q or wrong code (want %d):\n%s",
				name, strings.Join(args, " "), r.code, want, code, r.out)
		}
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].wall < rs[j].wall })
	return rs[len(rs)/2], nil
}

var overheadRE = regexp.MustCompile(`vmm_overhead_kib=(\d+)`)

func overheadMiB(out string) float64 {
	m := overheadRE.FindStringSubmatch(out)
	if m == nil {
		return -1
	}
	v, _ := strconv.Atoi(m[1])
	return float64(v) / 1024
}

var pfTakenRE = regexp.MustCompile(`stats: kvm: .*pf_taken=(\d+)`)

// pfTaken is the stage-2 fault count sfvmm --stats printed, or why not.
func pfTaken(out string) string {
	if m := pfTakenRE.FindStringSubmatch(out); m != nil {
		return m[1]
	}
	return "not counted by this host's KVM"
}

func main() {
	root := flag.String("root", ".", "repository root")
	n := flag.Int("n", 11, "runs per tiny-kernel measurement (median)")
	nLinux := flag.Int("n-linux", 3, "runs per Linux measurement (median)")
	flag.Parse()
	if err := run(*root, *n, *nLinux); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(root string, n, nLinux int) error {
	hello := filepath.Join(root, "build/kernels/hello.elf")
	initrd := filepath.Join(root, "build/kernels/initramfs.cpio")
	linux := os.Getenv("SFVMM_LINUX_KERNEL")
	if linux == "" {
		return fmt.Errorf("SFVMM_LINUX_KERNEL is not set (run through tests/kvmbox)")
	}
	qemu := []string{"-enable-kvm", "-cpu", "host", "-nographic", "-no-reboot",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"}
	// Each VMM with the command line its users give it: sfvmm's default
	// (its machine has no PCI bus) and QEMU's usual one for -M pc (which
	// has, and whose ACPI tables need it), both quiet.
	const run = ` quiet sfvmm.run="echo answer=$((6*7))"`
	const sfvmmCmd = "console=ttyS0 reboot=k panic=-1 pci=off" + run
	const qemuCmd = "console=ttyS0 panic=-1" + run

	sfHello, err := median(n, "hello from sfvmm", 1, "sfvmm", "run", "--stats", "--kernel", hello)
	if err != nil {
		return err
	}
	qHello, err := median(n, "hello from sfvmm", 1, "qemu-system-x86_64",
		append(qemu, "-M", "pc", "-m", "128", "-kernel", hello)...)
	if err != nil {
		return err
	}
	// sfvmm run unpacks a bzImage's kernel on the host once and keeps it
	// (--kernel-cache): the first boot of a kernel pays for the unpacking,
	// the later ones, measured as sfvmm's Linux time, do not.
	cache, err := os.MkdirTemp("", "bench-boot-cache-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cache)
	sfLinuxArgs := []string{"run", "--stats", "--cpus", "2", "--memory", "256M", "--kernel", linux, "--initrd", initrd,
		"--cmdline", sfvmmCmd, "--kernel-cache", cache}
	sfLinuxCold, err := median(1, "answer=42", 0, "sfvmm", sfLinuxArgs...)
	if err != nil {
		return err
	}
	sfLinux, err := median(nLinux, "answer=42", 0, "sfvmm", sfLinuxArgs...)
	if err != nil {
		return err
	}
	sfLinuxSelf, err := median(nLinux, "answer=42", 0, "sfvmm", append(sfLinuxArgs, "--unpack-kernel=false")...)
	if err != nil {
		return err
	}
	qLinux, err := median(nLinux, "answer=42", 0, "qemu-system-x86_64",
		append(qemu, "-M", "pc", "-smp", "2", "-m", "256", "-kernel", linux, "-initrd", initrd, "-append", qemuCmd)...)
	if err != nil {
		return err
	}
	// The same kernel unpacked: sfvmm boots the ELF vmlinux directly (as
	// Firecracker does), QEMU through its PVH entry note.
	var sfVmlinux, qVmlinux result
	vmlinux := os.Getenv("SFVMM_LINUX_VMLINUX")
	if vmlinux != "" {
		if sfVmlinux, err = median(nLinux, "answer=42", 0, "sfvmm", "run", "--stats", "--cpus", "2", "--memory", "256M",
			"--kernel", vmlinux, "--initrd", initrd, "--cmdline", sfvmmCmd); err != nil {
			return err
		}
		if qVmlinux, err = median(nLinux, "answer=42", 0, "qemu-system-x86_64",
			append(qemu, "-M", "pc", "-smp", "2", "-m", "256", "-kernel", vmlinux, "-initrd", initrd, "-append", qemuCmd)...); err != nil {
			return err
		}
	}
	ratio := func(a, b result) float64 { return a.wall.Seconds() / b.wall.Seconds() }
	fmt.Println("| measurement | sfvmm | QEMU -enable-kvm | ratio | target |")
	fmt.Println("|---|---|---|---|---|")
	fmt.Printf("| hello: process start to exit (median of %d) | %.3f s | %.3f s | %.3f | ≤ 0.1 |\n",
		n, sfHello.wall.Seconds(), qHello.wall.Seconds(), ratio(sfHello, qHello))
	fmt.Printf("| Linux 2 vCPU, 256 MiB, bzImage: start to power-off (median of %d; sfvmm unpacked it on the host at its first boot) | %.3f s | %.3f s (-M pc) | %.3f | ≤ 0.5 |\n",
		nLinux, sfLinux.wall.Seconds(), qLinux.wall.Seconds(), ratio(sfLinux, qLinux))
	fmt.Printf("| Linux as above, sfvmm's first boot of that bzImage (unpacking it, one run) | %.3f s | %.3f s (-M pc) | %.3f | |\n",
		sfLinuxCold.wall.Seconds(), qLinux.wall.Seconds(), ratio(sfLinuxCold, qLinux))
	fmt.Printf("| Linux as above, sfvmm --unpack-kernel=false (the bzImage decompresses itself, as in QEMU) | %.3f s | %.3f s (-M pc) | %.3f | |\n",
		sfLinuxSelf.wall.Seconds(), qLinux.wall.Seconds(), ratio(sfLinuxSelf, qLinux))
	if vmlinux != "" {
		fmt.Printf("| Linux as above, both booting the unpacked vmlinux (QEMU via PVH) | %.3f s | %.3f s (-M pc) | %.3f | |\n",
			sfVmlinux.wall.Seconds(), qVmlinux.wall.Seconds(), ratio(sfVmlinux, qVmlinux))
	}
	fmt.Printf("| VMM RSS overhead (peak RSS − guest RAM touched), hello | %.1f MiB | | | ≤ 16 MiB |\n", overheadMiB(sfHello.out))
	fmt.Printf("| VMM RSS overhead (peak RSS − guest RAM touched), Linux | %.1f MiB | | | ≤ 16 MiB |\n", overheadMiB(sfLinux.out))
	fmt.Printf("| VMM RSS overhead, Linux, first boot (unpacking: xz's 32 MiB dictionary) | %.1f MiB | | | |\n", overheadMiB(sfLinuxCold.out))
	fmt.Printf("| VMM RSS overhead, Linux, bzImage decompressing itself | %.1f MiB | | | |\n", overheadMiB(sfLinuxSelf.out))
	if vmlinux != "" {
		fmt.Printf("| VMM RSS overhead (peak RSS − guest RAM touched), Linux vmlinux | %.1f MiB | | | ≤ 16 MiB |\n", overheadMiB(sfVmlinux.out))
	}
	fmt.Printf("| KVM's stage-2 page faults (pf_taken), Linux | %s | | | |\n", pfTaken(sfLinux.out))
	return nil
}
