//go:build kvm

package tests

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/vmm/api"
	"github.com/sfvmm/sfvmm/vmm/vmtest"
)

// forktest starts the forktest kernel in sfvmm with the given command line
// and extra sfvmm flags.
func forktest(t *testing.T, cmdline string, flags ...string) *proc {
	t.Helper()
	args := append([]string{"run", "--kernel", vmtest.Kernel(t, "forktest"), "--memory", "128M",
		"--cmdline", cmdline}, flags...)
	return start(t, sfvmmPath(t), args...)
}

// memtapRE matches the statistics line a clone prints at exit.
var memtapRE = regexp.MustCompile(`sfvmm clone (\d+): memtap: (\d+) faults, (\d+) pages fetched, (\d+) zero-filled locally`)

type cloneStats struct{ faults, fetched, zeroFilled uint64 }

func parseCloneStats(t *testing.T, out string) map[int]cloneStats {
	t.Helper()
	stats := map[int]cloneStats{}
	for _, m := range memtapRE.FindAllStringSubmatch(out, -1) {
		id, _ := strconv.Atoi(m[1])
		var s cloneStats
		s.faults, _ = strconv.ParseUint(m[2], 10, 64)
		s.fetched, _ = strconv.ParseUint(m[3], 10, 64)
		s.zeroFilled, _ = strconv.ParseUint(m[4], 10, 64)
		stats[id] = s
	}
	return stats
}

// forkDone waits for a forktest fork to end with debug-exit 0 and returns
// its output and the checksum it printed of its size bytes before forking.
func forkDone(t *testing.T, p *proc, timeout time.Duration, size int) (out, sum string) {
	t.Helper()
	if code := p.wait(t, timeout); code != 1 {
		t.Fatalf("exit status %d, want 1 (debug-exit 0): %s\n%s", code, p.trouble(), p.Output())
	}
	out = p.Output()
	re := regexp.MustCompile(fmt.Sprintf(`forktest: %d bytes written at 0x1000000, checksum (0x[0-9a-f]+)`, size))
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no pre-fork checksum:\n%s", out)
	}
	return out, m[1]
}

// The forktest kernel forks 16 clones; each checks the pre-fork pattern
// and that the memory the parent never touched reads as zero, while the
// parent overwrites the pattern.
func TestFork16Clones(t *testing.T) {
	const clones = 16
	p := forktest(t, fmt.Sprintf("mode=fork clones=%d size=16M", clones), "--fork-capacity", fmt.Sprint(clones))
	out, sum := forkDone(t, p, 4*time.Minute, 16<<20)
	for id := 1; id <= clones; id++ {
		for _, want := range []string{
			fmt.Sprintf("[clone %d] forktest: clone %d: pattern ok, checksum %s, untouched memory zero", id, id, sum),
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

// A tiny kernel fills 64 MiB with a pattern, forks 4 clones and at once
// overwrites the region. Every clone sees the pre-fork pattern and
// checksum, and the 16 MiB the parent never touched as zeroes without
// fetching them; the parent's sf_join returns once all have called sf_exit.
func TestForkTinyKernel(t *testing.T) {
	p := forktest(t, "mode=fork clones=4 size=64M")
	out, sum := forkDone(t, p, 5*time.Minute, 64<<20)
	for id := 1; id <= 4; id++ {
		want := fmt.Sprintf("[clone %d] forktest: clone %d: pattern ok, checksum %s, untouched memory zero", id, id, sum)
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
		if want := fmt.Sprintf("sfvmm clone %d: guest ended: sf_exit status 0", id); !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	if strings.Contains(out, "parent overwrote the region, checksum now "+sum+"\n") {
		t.Errorf("the parent's overwrite left the checksum unchanged:\n%s", out)
	}
	for _, want := range []string{"forktest: parent overwrote the region", "forktest: parent joined: all 4 clones exited, 0 without sf_exit(0)"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	// The region is 16384 pages and the untouched memory after it 4096:
	// a clone fetches the first (and its code and stack) but none of the
	// second, which memtap fills locally.
	stats := parseCloneStats(t, out)
	if len(stats) != 4 {
		t.Fatalf("memtap statistics of %d clones, want 4:\n%s", len(stats), out)
	}
	for id, s := range stats {
		t.Logf("clone %d: %d faults, %d pages fetched, %d zero-filled", id, s.faults, s.fetched, s.zeroFilled)
		if s.fetched < 16384 || s.fetched >= 16384+4096 {
			t.Errorf("clone %d fetched %d pages; the pattern is 16384 and the untouched 4096 must not be fetched", id, s.fetched)
		}
		if s.zeroFilled < 4096 {
			t.Errorf("clone %d zero-filled %d pages, fewer than the 4096 the parent never touched", id, s.zeroFilled)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

// Every call a guest can get wrong returns an error code and nothing
// crashes: the parent's sf_exit, unknown tickets and checkpoints, a
// ticket over capacity, a used ticket, and a clone's parent-only calls.
func TestForkMisuse(t *testing.T) {
	p := forktest(t, "mode=misuse cap=4", "--fork-capacity", "4")
	if code := p.wait(t, 3*time.Minute); code != 1 {
		t.Fatalf("exit status %d, want 1 (debug-exit 0): %s\n%s", code, p.trouble(), p.Output())
	}
	out := p.Output()
	for _, want := range []string{
		"misuse: parent sf_exit -> -5 (want -5) ok",
		"misuse: sf_request_ticket over capacity -> -3 (want -3) ok",
		"misuse: sf_join of unknown ticket -> -2 (want -2) ok",
		"[clone 1] misuse: clone 1: sf_join -> -4, sf_kill -> -4, sf_request_ticket -> -4, sf_clone -> -4, sf_id -> 1",
		"misuse: 0 failures",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q:\n%s", want, out)
		}
	}
}

// sf_kill ends every clone of the ticket, and the parent goes on. The test
// waits for both clones to run before it lets the parent kill them; the
// process's output closes only when parent and clones have all exited.
func TestForkKill(t *testing.T) {
	p := forktest(t, "mode=kill")
	p.waitFor(t, "[clone 1] forktest: clone 1 spinning", 2*time.Minute)
	p.waitFor(t, "[clone 2] forktest: clone 2 spinning", 2*time.Minute)
	p.typeLine(t, "k")
	if code := p.wait(t, time.Minute); code != 1 {
		t.Fatalf("exit status %d, want 1 (debug-exit 0): %s\n%s", code, p.trouble(), p.Output())
	}
	out := p.Output()
	for _, want := range []string{"forktest: sf_kill -> 0", "forktest: sf_join after sf_kill -> -2", "forktest: parent goes on after sf_kill"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "guest ended: sf_exit") {
		t.Errorf("a killed clone ended by itself:\n%s", out)
	}
}

// A memory server that dies (SIGKILL) or stops answering (SIGSTOP, until
// the clones have given up) while clones still need pages makes them stop
// with a clear error within seconds; the parent goes on and its sf_join
// reports them.
func TestForkDeadMemoryServer(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGSTOP} {
		t.Run(sig.String(), func(t *testing.T) { deadMemoryServer(t, sig) })
	}
}

func deadMemoryServer(t *testing.T, sig syscall.Signal) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	// The clones need the server for the pages the parent has written
	// since the fork (the others they may read from the parent's memory
	// directly): the signal comes once the parent has overwritten the
	// region's first page and before the clones touch it.
	p := forktest(t, "mode=wait clones=4 size=16M delay=10", "--api-sock", sock)
	for id := 1; id <= 4; id++ {
		p.waitFor(t, fmt.Sprintf("[clone %d] forktest: clone %d running", id, id), 2*time.Minute)
	}
	p.waitFor(t, "forktest: parent overwrote the region's first page", time.Minute)
	c := api.Dial(sock)
	defer c.Close()
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.MemoryServerPID == 0 {
		t.Fatalf("status names no memory server: %+v", st)
	}
	if err := syscall.Kill(st.MemoryServerPID, sig); err != nil {
		t.Fatalf("signal the memory server (pid %d): %v", st.MemoryServerPID, err)
	}
	signalled := time.Now()
	if sig == syscall.SIGSTOP {
		defer syscall.Kill(st.MemoryServerPID, syscall.SIGCONT)
		// The stopped server is also the parent's copy-before-write
		// handler: the parent waits on it as soon as it writes. Once
		// the clones have given up, it may answer again.
		for id := 1; id <= 4; id++ {
			p.waitFor(t, fmt.Sprintf("sfvmm clone %d: error: guest memory lost", id), 30*time.Second)
		}
		syscall.Kill(st.MemoryServerPID, syscall.SIGCONT)
	}
	// The clones wait 10 s of wall-clock time before they touch the
	// region: a clone that finished its wait before the signal would
	// print "pattern ok" and fail the test below. memtap gives up on a
	// dead server at once, on a silent one after 5 s.
	p.waitFor(t, "forktest: parent joined: all 4 clones exited, 4 without sf_exit(0)", 30*time.Second)
	t.Logf("all clones ended %v after the memory server got %v", time.Since(signalled).Round(time.Millisecond), sig)
	if code := p.wait(t, time.Minute); code != 3 {
		t.Errorf("exit status %d, want 3 (debug-exit 1)", code)
	}
	out := p.Output()
	for id := 1; id <= 4; id++ {
		want := fmt.Sprintf("sfvmm clone %d: error: guest memory lost: memtap: memory server", id)
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
		if strings.Contains(out, fmt.Sprintf("clone %d: pattern ok", id)) {
			t.Errorf("clone %d finished its check without its memory server", id)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

// A Linux guest's shell script forks 3 clones with sfctl; each prints its
// ID and the checksum of a file computed before the fork, and recomputes
// it from its own (lazily fetched) memory; the parent joins.
func TestForkLinuxSfctl(t *testing.T) {
	kernel, initrd := linuxKernel(t)
	script := `head -c 4000000 /dev/urandom > /tmp/f; sum=$(md5sum /tmp/f | cut -c1-32); echo parent sum $sum; ` +
		`t=$(sfctl ticket 3); id=$(sfctl clone $t); ` +
		`if [ $id != 0 ]; then echo clone $id sum $sum now $(md5sum /tmp/f | cut -c1-32) id $(sfctl id); sfctl exit; echo sfctl exit returned; fi; ` +
		`sfctl join $t && echo parent joined 3 clones`
	p := start(t, sfvmmPath(t), "run", "--kernel", kernel, "--initrd", initrd, "--cpus", "2", "--memory", "256M",
		"--cmdline", linuxCmdline+` sfvmm.run="`+script+`"`)
	if code := p.wait(t, 5*time.Minute); code != 0 {
		t.Fatalf("exit status %d, want 0: %s\n%s", code, p.trouble(), p.Output())
	}
	out := p.Output()
	m := regexp.MustCompile(`parent sum ([0-9a-f]{32})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no parent checksum:\n%s", out)
	}
	for id := 1; id <= 3; id++ {
		want := fmt.Sprintf("[clone %d] clone %d sum %s now %s id %d", id, id, m[1], m[1], id)
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
		if want := fmt.Sprintf("sfvmm clone %d: guest ended: sf_exit status 0", id); !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	for _, bad := range []string{"sfctl exit returned", "sfctl:"} {
		if strings.Contains(out, bad) {
			t.Errorf("output has %q", bad)
		}
	}
	if !strings.Contains(out, "parent joined 3 clones") {
		t.Errorf("the parent did not join")
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

// `sfvmm fork` forks a running guest from the host: the clones carry on
// with their IDs and their own control sockets, and `sfvmm fork --kill`
// ends them while the parent runs on.
func TestForkFromHost(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	p := forktest(t, "mode=ticker", "--api-sock", sock)
	p.waitFor(t, "forktest: ticker id=0 n=2", 2*time.Minute)
	bin := sfvmmPath(t)
	out, code := run(t, time.Minute, bin, "fork", "--api-sock", sock, "--clones", "2")
	if code != 0 || !strings.Contains(out, "ticket 1: 2 clones started") {
		t.Fatalf("sfvmm fork: exit %d\n%s", code, out)
	}
	t.Log(strings.TrimSpace(out))
	p.waitFor(t, "[clone 1] forktest: ticker id=1", 2*time.Minute)
	p.waitFor(t, "[clone 2] forktest: ticker id=2", 2*time.Minute)

	c := api.Dial(sock + ".1-2")
	st, err := c.Status(context.Background())
	c.Close()
	if err != nil {
		t.Fatalf("clone 2's control socket: %v", err)
	}
	if st.CloneID != 2 || st.Memtap == nil || st.Memtap.Faults == 0 {
		t.Errorf("clone 2's status: %+v, want clone ID 2 with memtap faults", st)
	}

	out, code = run(t, time.Minute, bin, "fork", "--api-sock", sock, "--kill", "1")
	if code != 0 || !strings.Contains(out, "ticket 1: clones killed") {
		t.Fatalf("sfvmm fork --kill: exit %d\n%s", code, out)
	}
	// Any later tick: sfvmm's own log lines (stderr) can land inside one
	// of the guest's (stdout) in the output the test reads.
	n := lastParentTick(p.Output())
	p.waitUntil(t, fmt.Sprintf("a parent tick after %d", n), func(out string) bool {
		return lastParentTick(out) > n
	}, time.Minute)
	out, code = run(t, time.Minute, bin, "fork", "--api-sock", sock, "--join", "1")
	if code == 0 || !strings.Contains(out, "ticket") {
		t.Errorf("join of a killed ticket: exit %d, want an error naming the ticket:\n%s", code, out)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(t, time.Minute)
}

var parentTickRE = regexp.MustCompile(`(?m)^forktest: ticker id=0 n=(\d+)`)

// lastParentTick is the parent's last tick count in out, 0 if none.
func lastParentTick(out string) int {
	m := parentTickRE.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	return n
}
