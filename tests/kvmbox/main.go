// Command kvmbox runs a command where /dev/kvm works, with this checkout's
// sfvmm on PATH. It is how sfvmm's KVM tests, benchmarks and demos run on
// machines without /dev/kvm (see "Testing without /dev/kvm: the nested
// sandbox" in DESIGN.md):
//
//	tests/kvmbox/kvmbox.sh [flags] -- CMD [ARGS...]
//	go run ./tests/kvmbox [flags] -- CMD [ARGS...]
//
// kvmbox exits with CMD's status; "go run" does not pass that on (it exits
// 1 for any failure), so scripts that check it use kvmbox.sh, which builds
// kvmbox into build/kvmbox/kvmbox and execs it. Its own statuses: 125 it
// could not run CMD, 124 --timeout expired, 123 the sandbox guest itself
// went down while CMD ran (CMD's result unknown).
//
// If /dev/kvm is usable, CMD runs directly (--nested overrides that).
// Otherwise kvmbox boots Debian's kernel under QEMU's TCG emulator with an
// AMD CPU model, loads kvm_amd there, and runs CMD as root in that guest.
// The guest's root file system is the host's, read-only over 9p, with the
// checkout mounted read-write at its own path, fresh tmpfs on /tmp, /run and
// /var/tmp (the host's are not visible), and the current directory kept.
// Host binaries such as static Go test binaries, ip(8) or qemu itself run
// there unchanged; put them in the checkout (build/ is the place), not in
// /tmp. CMD's stdin is /dev/null; its stdout and stderr come back live.
// Kernel warnings the guest prints while CMD runs are shown afterwards.
//
// CMD's environment is the caller's plus:
//
//	PATH                build/kvmbox/bin (sfvmm, built with CGO_ENABLED=0) first
//	KVMBOX=1            and KVMBOX_MODE=direct or nested
//	SFVMM_LINUX_KERNEL  a Debian vmlinuz (bzImage) for guest kernel tests
//	SFVMM_LINUX_VMLINUX the same kernel unpacked (ELF vmlinux)
//	SFVMM_HOSTS         with --hosts N: network namespaces host0 ... host{N-1}
//	SFVMM_HOST_ADDRS    their addresses, 10.77.0.1 ... on one bridge
//
// In the sandbox GOCACHE and XDG_CACHE_HOME point into build/kvmbox and
// TMPDIR is unset, as the host's would be read-only or missing there.
//
// kvmbox fetches what it needs with apt (qemu-system-x86, busybox-static,
// iproute2, iputils-ping, and the linux-image package that
// linux-image-amd64 depends on, unpacked with dpkg -x) and caches the kernel
// and initramfs under build/kvmbox. "kvmbox --print-kernel" only fetches
// the kernel and prints SFVMM_LINUX_KERNEL. kvmbox is not a general VM
// runner or a security boundary: the guest sees the host's files and runs
// as root.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/sfvmm/sfvmm/vmm/boot"
)

// Exit statuses of kvmbox itself, as opposed to CMD's.
const (
	exitSetup = 125 // kvmbox could not run CMD
	// exitGuestDied: the sandbox guest itself went down while CMD ran.
	// Seen rarely under QEMU TCG with nested SVM; CMD's own result is
	// unknown, so a caller may rerun it.
	exitGuestDied = 123
	exitTimeout   = 124 // --timeout expired
)

type options struct {
	cpus     int
	mem      string
	hosts    int
	hostsSet bool // --hosts given explicitly
	timeout  time.Duration
	// stallTimeout: a sandbox whose heartbeat stopped this long while
	// CMD ran is taken for stalled and killed.
	stallTimeout  time.Duration
	modules       []string
	nested        bool // use the sandbox even if /dev/kvm works
	direct        bool // use /dev/kvm even if it is not hardware-assisted
	noBuild       bool
	keep          bool
	verbose       bool
	quiet         bool
	printKernel   bool
	kernelPkg     string
	qemu          string // qemuDebian13 or qemuSystem
	sandboxKernel string // kernelSystem or kernelDebian13
	tcgThread     string // QEMU's -accel tcg,thread=
	// moduleParams are insmod arguments for sandbox kernel modules, by
	// module name (--module-param kvm:tdp_mmu=0).
	moduleParams map[string]string
	cmd          []string
}

var memRE = regexp.MustCompile(`^[0-9]+[MG]?$`)

// parseArgs parses kvmbox's flags; everything after them (or after "--")
// is CMD.
func parseArgs(args []string, stderr io.Writer) (*options, error) {
	o := &options{moduleParams: map[string]string{}}
	fs := flag.NewFlagSet("kvmbox", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run ./tests/kvmbox [flags] -- CMD [ARGS...]\n"+
			"       go run ./tests/kvmbox --print-kernel\n\nflags:\n")
		fs.PrintDefaults()
	}
	// One vCPU: with two, QEMU's multi-threaded TCG (7.2 and 10.0 alike,
	// under Debian 12's and 13's kernels) corrupts nested guests and the
	// sandbox's own kernel when many VMs run at once; see guest.go.
	fs.IntVar(&o.cpus, "cpus", 1, "vCPUs of the sandbox guest (more than one corrupts nested guests under load; see guest.go)")
	fs.StringVar(&o.mem, "mem", "3G", "memory of the sandbox guest (QEMU -m syntax: 3G, 4096M)")
	fs.IntVar(&o.hosts, "hosts", 1, "network namespaces host0..hostN-1 to create (0 for none)")
	fs.DurationVar(&o.timeout, "timeout", 20*time.Minute, "kill the sandbox after this long")
	fs.DurationVar(&o.stallTimeout, "stall-timeout", 30*time.Second, "kill the sandbox when its heartbeat stopped this long while CMD ran (0: never); exit status 123")
	mods := fs.String("modules", "tun", "extra kernel modules to load in the sandbox, comma-separated")
	fs.BoolVar(&o.nested, "nested", false, "use the QEMU sandbox even where /dev/kvm is usable")
	fs.BoolVar(&o.direct, "direct", false, "run CMD directly on /dev/kvm even if it is not hardware-assisted")
	fs.BoolVar(&o.noBuild, "no-build", false, "do not rebuild sfvmm before running CMD")
	fs.BoolVar(&o.keep, "keep", false, "keep the run directory (console log, outputs) after success")
	fs.BoolVar(&o.verbose, "v", false, "show the guest console and QEMU's messages")
	fs.BoolVar(&o.quiet, "q", false, "no progress or timing lines on stderr")
	fs.BoolVar(&o.printKernel, "print-kernel", false, "fetch the Debian kernel if needed and print its path")
	fs.StringVar(&o.qemu, "qemu", qemuDebian13, "the sandbox's emulator: "+qemuDebian13+" (Debian 13's QEMU 10, fetched into build/kvmbox) or "+qemuSystem+" (the host's qemu-system-x86_64)")
	fs.StringVar(&o.sandboxKernel, "sandbox-kernel", kernelSystem, "the sandbox guest's kernel: "+kernelSystem+" (the host's Debian kernel package, also the guest kernel of the tests) or "+kernelDebian13+" (Debian 13's)")
	fs.Func("module-param", "NAME:ARGS: insmod arguments for a sandbox kernel module (kvm:tdp_mmu=0); repeatable", func(v string) error {
		name, args, ok := strings.Cut(v, ":")
		if !ok || name == "" {
			return fmt.Errorf("want NAME:ARGS, such as kvm:tdp_mmu=0")
		}
		o.moduleParams[modName(name)] = strings.TrimSpace(o.moduleParams[modName(name)] + " " + args)
		return nil
	})
	fs.StringVar(&o.tcgThread, "tcg-thread", "multi", "QEMU's TCG threading: multi (a host thread per vCPU) or single")
	fs.StringVar(&o.kernelPkg, "kernel-package", "", "Debian linux-image package to use (default: what linux-image-amd64 depends on)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	fs.Visit(func(f *flag.Flag) { o.hostsSet = o.hostsSet || f.Name == "hosts" })
	if fs.NArg() > 0 {
		o.cmd = fs.Args()
	}
	for _, m := range strings.Split(*mods, ",") {
		if m = strings.TrimSpace(m); m != "" {
			o.modules = append(o.modules, m)
		}
	}
	switch {
	case o.printKernel && len(o.cmd) > 0:
		return nil, errors.New("--print-kernel takes no command")
	case !o.printKernel && len(o.cmd) == 0:
		fs.Usage()
		return nil, errors.New("no command given")
	case o.cpus < 1 || o.cpus > 64:
		return nil, fmt.Errorf("--cpus %d: want 1..64", o.cpus)
	case !memRE.MatchString(o.mem):
		return nil, fmt.Errorf("--mem %q: want a size such as 3G or 4096M", o.mem)
	case o.hosts < 0 || o.hosts > maxHosts:
		return nil, fmt.Errorf("--hosts %d: want 0..%d", o.hosts, maxHosts)
	case o.timeout <= 0:
		return nil, fmt.Errorf("--timeout %v: want a positive duration", o.timeout)
	case o.qemu != qemuDebian13 && o.qemu != qemuSystem:
		return nil, fmt.Errorf("--qemu %q: want %s or %s", o.qemu, qemuDebian13, qemuSystem)
	case o.sandboxKernel != kernelSystem && o.sandboxKernel != kernelDebian13:
		return nil, fmt.Errorf("--sandbox-kernel %q: want %s or %s", o.sandboxKernel, kernelSystem, kernelDebian13)
	case o.tcgThread != "multi" && o.tcgThread != "single":
		return nil, fmt.Errorf("--tcg-thread %q: want multi or single", o.tcgThread)
	case o.stallTimeout < 0:
		return nil, fmt.Errorf("--stall-timeout %v: want zero or a positive duration", o.stallTimeout)
	}
	return o, nil
}

func main() {
	o, err := parseArgs(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "kvmbox: %v\n", err)
		os.Exit(2)
	}
	rc, err := run(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvmbox: %v\n", err)
	}
	os.Exit(rc)
}

// box is one kvmbox invocation: where things are and what to run.
type box struct {
	opts   *options
	root   string // the checkout
	cache  string // root/build/kvmbox
	binDir string // cache/bin, put first on CMD's PATH
	cwd    string
	start  time.Time
}

func run(o *options) (int, error) {
	b := &box{opts: o, start: time.Now()}
	var err error
	if b.cwd, err = os.Getwd(); err != nil {
		return exitSetup, err
	}
	if b.root, err = findCheckout(b.cwd); err != nil {
		return exitSetup, err
	}
	b.cache = filepath.Join(b.root, "build", "kvmbox")
	b.binDir = filepath.Join(b.cache, "bin")
	for _, d := range []string{b.binDir, filepath.Join(b.cache, "kernel")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return exitSetup, err
		}
	}
	lock, err := lockCache(b.cache)
	if err != nil {
		return exitSetup, err
	}
	// Held while preparing: the kernel, initramfs and sfvmm binary are
	// shared by concurrent runs.
	unlock := func() {
		if lock != nil {
			lock.Close()
			lock = nil
		}
	}
	defer unlock()

	if o.printKernel {
		k, err := ensureKernel(b.cache, o.kernelPkg, nil)
		if err != nil {
			return exitSetup, fmt.Errorf("fetch kernel: %w", err)
		}
		fmt.Println(k.Vmlinuz)
		return 0, nil
	}

	if !o.noBuild {
		if err := buildSfvmm(b.root, b.binDir); err != nil {
			return exitSetup, err
		}
	}
	direct, why := kvmUsable()
	if o.nested {
		direct = false
	} else if o.direct {
		direct = true
	}
	if direct {
		k, err := ensureKernel(b.cache, o.kernelPkg, nil)
		if err != nil {
			warnf("no Debian kernel for SFVMM_LINUX_KERNEL: %v", err)
		} else if _, err := k.ensureVmlinux(); err != nil {
			warnf("no unpacked kernel for SFVMM_LINUX_VMLINUX: %v", err)
		}
		unlock()
		return b.runDirect(k)
	}
	if !o.quiet && !o.nested {
		logf("%s; running CMD in the nested QEMU sandbox", why)
	}
	if err := ensureTools(toolBusybox, toolIP, toolPing); err != nil {
		return exitSetup, fmt.Errorf("host tools: %w", err)
	}
	q, err := ensureOuterQEMU(b.cache, o.qemu)
	if err != nil {
		return exitSetup, err
	}
	k, err := ensureKernel(b.cache, o.kernelPkg, nil)
	if err != nil {
		return exitSetup, fmt.Errorf("fetch kernel: %w", err)
	}
	sk := k // the sandbox's own kernel
	if o.sandboxKernel == kernelDebian13 {
		apt, err := newSuiteApt(filepath.Join(b.cache, "apt-"+debian13), debian13)
		if err != nil {
			return exitSetup, err
		}
		if sk, err = ensureKernel(b.cache, "", apt); err != nil {
			return exitSetup, fmt.Errorf("fetch Debian 13's kernel: %w", err)
		}
	}
	vmlinux, err := sk.ensureVmlinux()
	if errors.Is(err, boot.ErrPayloadFormat) {
		// Debian 13 compresses its kernel with zstd, which sfvmm's
		// unpacker does not read; QEMU boots the bzImage itself, a few
		// seconds slower under TCG.
		vmlinux, err = sk.Vmlinuz, nil
	}
	if err != nil {
		return exitSetup, fmt.Errorf("unpack kernel: %w", err)
	}
	initrd, err := buildInitramfs(b.cache, sk, o.moduleParams)
	if err != nil {
		return exitSetup, fmt.Errorf("build initramfs: %w", err)
	}
	pruneRunDirs(b.cache)
	unlock()
	return b.runNested(q, sk, k, vmlinux, initrd)
}

// cmdEnv is CMD's environment: the caller's, minus what only makes sense
// in the caller's session, plus sfvmm's on PATH and the sandbox variables.
func (b *box) cmdEnv(k *kernel, mode string, drop ...string) []string {
	skip := map[string]bool{"PATH": true, "PWD": true, "OLDPWD": true, "KVMBOX": true, "KVMBOX_MODE": true,
		"SFVMM_HOSTS": true, "SFVMM_HOST_ADDRS": true, "SFVMM_LINUX_KERNEL": true, "SFVMM_LINUX_VMLINUX": true}
	for _, d := range drop {
		skip[d] = true
	}
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !skip[name] {
			env = append(env, kv)
		}
	}
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	env = append(env, "PATH="+b.binDir+":"+path, "PWD="+b.cwd, "KVMBOX=1", "KVMBOX_MODE="+mode)
	if k != nil {
		env = append(env, "SFVMM_LINUX_KERNEL="+k.Vmlinuz)
		if v := filepath.Join(k.Dir, "vmlinux"); fileExists(v) {
			env = append(env, "SFVMM_LINUX_VMLINUX="+v)
		}
	}
	return append(env, hostsEnv(b.opts.hosts)...)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
