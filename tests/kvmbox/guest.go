package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A run directory, build/kvmbox/run-XXXX, is how the host and the guest
// talk; the guest sees it at the same path through the checkout's 9p share.
// The host writes run.sh (what to run, see runScript) and modules (extra
// modules to insmod); the guest writes started, stdout, stderr and rc,
// and touches heartbeat every 2 s while CMD runs. console.log is the
// guest's serial console.
const (
	fileScript  = "run.sh"
	fileModules = "modules"
	fileStarted = "started"
	fileStdout  = "stdout"
	fileStderr  = "stderr"
	fileRC      = "rc"
	fileBeat    = "heartbeat"
	fileConsole = "console.log"
	fileMonitor = "monitor.sock" // QEMU's monitor (see qemuArgs)
	fileStall   = "stall.txt"    // the CPU's state when a stall was seen
	fileQEMULog = "qemu.log"     // QEMU's -d log: the CPU state at a reset
)

// kernelCmdline is fixed apart from where the run directory and checkout
// are. Under TCG every avoided probe counts: no i8042 probe, no timer
// check, no mitigations; panic=-1 and QEMU's -no-reboot turn an init
// that dies into QEMU exiting instead of a hang.
func kernelCmdline(run, checkout string, debug bool) string {
	args := []string{
		"console=ttyS0", "quiet", "loglevel=4", "panic=-1", "rdinit=/init",
		"mitigations=off", "no_timer_check", "tsc=reliable", "i8042.noaux", "i8042.nokbd",
		"i8042.nopnp", "random.trust_cpu=on",
		"kvmbox.run=" + run, "kvmbox.checkout=" + checkout,
	}
	if debug {
		args = append(args, "kvmbox.debug")
	}
	return strings.Join(args, " ")
}

// qemuArgs are the sandbox's QEMU arguments. It has one vCPU unless
// --cpus says otherwise: with two, TCG runs them on two host threads, and
// when many nested VMs run at once their state gets corrupted (a clone
// computing with wrong register values while its memory was right, nested
// Linux guests triple faulting, the sandbox kernel trapping on an int3 left
// in a patched instruction, a task's kernel stack overwritten, the sandbox
// itself triple faulting), under QEMU 7.2 and 10.0 and Debian 12's and
// 13's kernels alike, with or without forks. One vCPU runs the same loads
// clean. (thread=single with two vCPUs leaves nested Linux boots hung.)
func (b *box) qemuArgs(vmlinux, initrd, run string) []string {
	o := b.opts
	args := []string{
		"-accel", "tcg,thread=" + o.tcgThread,
		"-cpu", "max,vendor=AuthenticAMD",
		"-smp", strconv.Itoa(o.cpus),
		"-m", o.mem,
		"-M", "pc",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		// A sandbox guest that triple-faults goes down without a word on
		// its console; QEMU logs its CPU state at the reset.
		"-d", "cpu_reset,guest_errors", "-D", filepath.Join(run, fileQEMULog),
		"-nic", "none",
		"-serial", "file:" + filepath.Join(run, fileConsole),
		"-kernel", vmlinux,
		"-initrd", initrd,
		"-append", kernelCmdline(run, b.root, o.verbose),
		"-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path=" + b.root + ",mount_tag=checkout,security_model=none,multidevs=remap",
	}
	// The QEMU monitor, for a person looking into a stalled sandbox ("info
	// registers", "info lapic"), where a Unix socket's path fits.
	if mon := filepath.Join(run, fileMonitor); len(mon) < 100 {
		args = append(args, "-monitor", "unix:"+mon+",server=on,wait=off")
	}
	return args
}

// runScript is the guest's second stage, run by /bin/sh of the host's file
// system chrooted: it redirects all output to the run directory, builds the
// --hosts network and execs CMD with exactly env.
func (b *box) runScript(run string, env []string) string {
	var s strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&s, format+"\n", args...) }
	p("#!/bin/sh")
	p("# Written by kvmbox for one run; run by the guest's init.")
	p("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	p("exec </dev/null >>%s 2>>%s", shellQuote(filepath.Join(run, fileStdout)), shellQuote(filepath.Join(run, fileStderr)))
	p(": >%s", shellQuote(filepath.Join(run, fileStarted)))
	// The heartbeat needs the guest's timers, which is what a stalled
	// sandbox lacks (see stallWatch).
	p("(while :; do : >%s; sleep 2; done) &", shellQuote(filepath.Join(run, fileBeat)))
	for _, batch := range hostsSetup(b.opts.hosts) {
		cmd := shellJoin(batch.args())
		p("%s <<'EOF' || { echo %s >&2; exit %d; }", cmd, shellQuote("kvmbox: --hosts network setup failed: "+cmd), exitSetup)
		p("%s\nEOF", strings.Join(batch.lines, "\n"))
	}
	// The checkout's 9p mount (cache=mmap) pages a binary in over 9p on
	// every start, which under TCG costs about a second per process; a
	// copy in the guest's tmpfs starts like any local binary.
	const localBin = "/run/kvmbox-bin"
	p("mkdir -p %s; cp %s %s %s/ 2>/dev/null", localBin, shellQuote(filepath.Join(b.binDir, "sfvmm")),
		shellQuote(filepath.Join(b.binDir, "sfvmm-agent")), localBin)
	env = append([]string(nil), env...)
	for i, kv := range env {
		if rest, ok := strings.CutPrefix(kv, "PATH="); ok {
			env[i] = "PATH=" + localBin + ":" + rest
		}
	}
	p("cd %s || exit %d", shellQuote(b.cwd), exitSetup)
	p("exec env -i %s %s", shellJoin(env), shellJoin(b.opts.cmd))
	return s.String()
}

// runNested boots the sandbox guest, runs CMD there and returns its exit
// status.
// runNested boots the sandbox guest on kernel sk (vmlinux, initrd), runs
// CMD there with guest kernel k in its environment, and returns CMD's exit
// status.
func (b *box) runNested(q *outerQEMU, sk, k *kernel, vmlinux, initrd string) (int, error) {
	o := b.opts
	for _, p := range []string{b.root, b.cwd} {
		if strings.ContainsAny(p, " \t\n'\"\\,") {
			return exitSetup, fmt.Errorf("path %q: the sandbox cannot share paths with spaces, quotes or commas", p)
		}
	}
	run, err := os.MkdirTemp(b.cache, "run-")
	if err != nil {
		return exitSetup, err
	}
	keep := o.keep
	defer func() {
		if keep {
			logf("run directory kept: %s", run)
		} else {
			os.RemoveAll(run)
		}
	}()

	// In the guest the host's TMPDIR may not exist and the Go build cache
	// and the user's cache directory (sfvmm's unpacked kernels) would be
	// read-only; point them at writable places.
	env := b.cmdEnv(k, "nested", "TMPDIR", "GOCACHE", "GOTMPDIR", "XDG_CACHE_HOME")
	env = append(env, "GOCACHE="+filepath.Join(b.cache, "gocache"), "XDG_CACHE_HOME="+filepath.Join(b.cache, "xdg-cache"))
	mods := o.modules
	if o.hosts > 0 {
		// sch_netem: tests that lose packets on purpose (tc qdisc ... netem);
		// sch_prio and cls_u32 let them lose only some packets (a band of
		// its own, and a filter that sends packets there).
		mods = append(append([]string(nil), mods...), "veth", "bridge", "sch_netem", "sch_prio", "cls_u32")
	}
	var modList strings.Builder
	if len(mods) > 0 {
		paths, err := sk.modulePaths(mods)
		if err != nil {
			return exitSetup, fmt.Errorf("--modules: %w", err)
		}
		for _, p := range paths {
			fmt.Fprintf(&modList, "%s %s\n", p, o.moduleParams[modName(p)])
		}
	}
	files := map[string]string{
		fileScript:  b.runScript(run, env),
		fileModules: modList.String(),
		fileStdout:  "",
		fileStderr:  "",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(run, name), []byte(data), 0o755); err != nil {
			return exitSetup, err
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	ctx, stopSignals := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stopSignals()

	var qemuErr bytes.Buffer
	qemu := q.command(b.qemuArgs(vmlinux, initrd, run)...)
	qemu.Stdin = nil
	qemu.Stdout, qemu.Stderr = &qemuErr, &qemuErr
	if o.verbose {
		qemu.Stdout, qemu.Stderr = os.Stderr, os.Stderr
	}
	// Its own process group, so ^C reaches kvmbox, which then stops the
	// guest; and killed along with kvmbox.
	qemu.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := qemu.Start(); err != nil {
		return exitSetup, fmt.Errorf("start QEMU: %w", err)
	}
	bootStart := time.Now()
	exited := make(chan error, 1)
	go func() { exited <- qemu.Wait() }()

	tails := []*tail{
		{path: filepath.Join(run, fileStdout), w: os.Stdout},
		{path: filepath.Join(run, fileStderr), w: os.Stderr},
	}
	if o.verbose {
		tails = append(tails, &tail{path: filepath.Join(run, fileConsole), w: os.Stderr})
	}
	var upAt, doneAt time.Time
	poll := func() {
		for _, t := range tails {
			t.copy()
		}
		now := time.Now()
		if upAt.IsZero() && exists(filepath.Join(run, fileStarted)) {
			upAt = now
		}
		if doneAt.IsZero() && exists(filepath.Join(run, fileRC)) {
			doneAt = now
		}
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	stall := stallWatch{beat: filepath.Join(run, fileBeat), window: o.stallTimeout}
	var waitErr error
loop:
	for {
		select {
		case waitErr = <-exited:
			break loop
		case <-tick.C:
			poll()
			if !upAt.IsZero() && doneAt.IsZero() && stall.stalled(time.Now()) {
				state := filepath.Join(run, fileStall)
				os.WriteFile(state, []byte(stallState(filepath.Join(run, fileMonitor), 5*time.Second)), 0o644)
				qemu.Process.Kill()
				<-exited
				poll()
				keep = true
				return exitGuestDied, fmt.Errorf("the sandbox's heartbeat stopped for %v while CMD ran: its CPU no longer "+
					"takes interrupts (seen under QEMU 7.2 and 10.0 TCG with one vCPU, halted or spinning with its timer interrupt pending); "+
					"killed QEMU (--stall-timeout 0 waits instead). Guest console: %s; its CPU's state before the kill: %s",
					o.stallTimeout, filepath.Join(run, fileConsole), state)
			}
		case <-ctx.Done():
			qemu.Process.Kill()
			<-exited
			poll()
			keep = true
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return exitTimeout, fmt.Errorf("timed out after %v (--timeout); killed QEMU. Guest console: %s",
					o.timeout, filepath.Join(run, fileConsole))
			}
			return 130, errors.New("interrupted; killed QEMU")
		}
	}
	poll()

	rcData, err := os.ReadFile(filepath.Join(run, fileRC))
	if err != nil {
		keep = true
		msg := "the guest stopped before CMD finished"
		if waitErr != nil {
			msg = fmt.Sprintf("QEMU failed (%v)", waitErr)
		}
		return exitGuestDied, fmt.Errorf("%s.\n%s%s--- last lines of the guest console (%s):\n%s",
			msg, indent("QEMU said", qemuErr.String()+"\n"+resetNote(filepath.Join(run, fileQEMULog))), upNote(upAt),
			filepath.Join(run, fileConsole), lastLines(filepath.Join(run, fileConsole), 25))
	}
	rc, err := strconv.Atoi(strings.TrimSpace(string(rcData)))
	if err != nil {
		keep = true
		return exitSetup, fmt.Errorf("bad exit status %q from the guest", rcData)
	}
	if !o.verbose {
		// A quiet boot prints nothing but the power-down line; anything
		// else is the guest kernel warning about something (KVM included).
		if msgs := consoleNews(filepath.Join(run, fileConsole), 40); msgs != "" {
			logf("the guest kernel said:\n%s", msgs)
		}
	}
	if !o.quiet {
		if doneAt.IsZero() {
			doneAt = time.Now()
		}
		if upAt.IsZero() {
			upAt = doneAt
		}
		logf("guest up in %.1f s, CMD exited %d after %.1f s (total %.1f s)",
			upAt.Sub(bootStart).Seconds(), rc, doneAt.Sub(upAt).Seconds(), time.Since(b.start).Seconds())
	}
	return rc, nil
}

// stallWatch tells a stalled sandbox from a busy or merely waiting one by
// the guest's heartbeat file, which a shell loop touches every 2 s. Under
// QEMU's TCG (7.2 and 10.0) a one-vCPU sandbox's CPU was seen to stop
// taking interrupts for a while or for good, its LAPIC timer's vector
// pending (halted, or spinning on a lock
// with interrupts enabled); nothing in the guest runs on time then, and
// CMD's own timeouts never fire.
type stallWatch struct {
	beat    string
	window  time.Duration // 0: never stalled
	checked time.Time
}

// stalled reports whether the heartbeat is older than the window. Before
// the first beat it is not.
func (w *stallWatch) stalled(now time.Time) bool {
	if w.window <= 0 || now.Sub(w.checked) < time.Second {
		return false
	}
	w.checked = now
	fi, err := os.Stat(w.beat)
	return err == nil && now.Sub(fi.ModTime()) >= w.window
}

// tail copies what has been appended to a file since the last call.
type tail struct {
	path string
	w    io.Writer
	off  int64
}

func (t *tail) copy() {
	f, err := os.Open(t.path)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(t.off, io.SeekStart); err != nil {
		return
	}
	n, _ := io.Copy(t.w, f)
	t.off += n
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// resetNote returns the end of QEMU's log when it says more than the
// power-on resets: a sandbox guest that triple-faulted ("Triple fault"), or
// an access the emulated hardware refused.
func resetNote(log string) string {
	data, err := os.ReadFile(log)
	if err != nil || !strings.Contains(string(data), "Triple fault") && !strings.Contains(string(data), "invalid") {
		return ""
	}
	return "QEMU's log (" + log + ") ends:\n" + lastLines(log, 40)
}

func upNote(upAt time.Time) string {
	if upAt.IsZero() {
		return "CMD never started: the guest failed while booting or mounting.\n"
	}
	return "CMD started, but the guest went down before it exited (out of memory? a kernel panic?).\n"
}

func indent(title, s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	return "--- " + title + ":\n" + s + "\n"
}

func lastLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// pruneRunDirs removes run directories that failed runs left behind more
// than a day ago.
func pruneRunDirs(cache string) {
	dirs, _ := filepath.Glob(filepath.Join(cache, "run-*"))
	for _, d := range dirs {
		if st, err := os.Stat(d); err == nil && time.Since(st.ModTime()) > 24*time.Hour {
			os.RemoveAll(d)
		}
	}
}

// consoleNews returns the last n lines of the guest console other than the
// expected power-down message.
func consoleNews(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimRight(l, "\r")
		if strings.TrimSpace(l) == "" || strings.HasSuffix(l, "reboot: Power down") {
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("(%d lines before these)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
