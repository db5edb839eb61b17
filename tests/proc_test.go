//go:build kvm

package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// proc is an sfvmm (or other) process a test drives through its stdin and
// watches through its combined output.
type proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed when the process has exited

	mu      sync.Mutex // guards out and changed
	out     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.changed)
	p.changed = make(chan struct{})
	return p.out.Write(b)
}

func (p *proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// sfvmmPath is the sfvmm binary kvmbox puts on PATH.
func sfvmmPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("sfvmm")
	if err != nil {
		t.Fatal("sfvmm is not on PATH: run the KVM tests through tests/kvmbox (make test)")
	}
	return p
}

// start runs name with args; the process is killed when the test ends.
func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(name, args...), done: make(chan struct{}), changed: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	// Output pipes stay open while any child holds them (a forked clone
	// does); Wait must not hang on one that outlives its parent.
	p.cmd.WaitDelay = 30 * time.Second
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// waitFor waits until the output contains want, and fails the test if the
// process exits or the timeout passes first.
// trouble is the lines of the output that say why a guest ended badly
// (a clone's exit other than sf_exit(0), a CPU exception, an error),
// joined: a failure message leads with them, as a CI log may show only a
// failure's first and last lines.
func (p *proc) trouble() string {
	var lines []string
	for _, l := range strings.Split(p.Output(), "\n") {
		bad := strings.Contains(l, "guest ended:") && !strings.Contains(l, "sf_exit status 0") && !strings.Contains(l, "debug-exit code 1") ||
			strings.Contains(l, "exception ") || strings.Contains(l, "error")
		if bad {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	if len(lines) == 0 {
		return "no clone or parent said why"
	}
	return strings.Join(lines, "; ")
}

func (p *proc) waitFor(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	p.waitUntil(t, fmt.Sprintf("%q", want), func(out string) bool { return printed(out, want) }, timeout)
}

// waitUntil waits until ok holds for the output, and fails the test
// (saying it waited for what) if the process exits or the timeout passes
// first.
func (p *proc) waitUntil(t *testing.T, what string, ok func(out string) bool, timeout time.Duration) {
	t.Helper()
	switch p.watch(ok, timeout) {
	case watchExited:
		t.Fatalf("%s exited before printing %s:\n%s", p.cmd.Path, what, p.Output())
	case watchTimeout:
		t.Fatalf("%s did not print %s within %v:\n%s", p.cmd.Path, what, timeout, p.Output())
	}
}

// waitBriefly reports whether the output has want within timeout, without
// failing the test.
func (p *proc) waitBriefly(want string, timeout time.Duration) bool {
	return p.watch(func(out string) bool { return printed(out, want) }, timeout) == watchFound
}

type watchResult int

const (
	watchFound watchResult = iota
	watchExited
	watchTimeout
)

// watch waits until ok holds for the output, the process exits or the
// timeout passes, and says which.
func (p *proc) watch(ok func(out string) bool, timeout time.Duration) watchResult {
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		found := ok(p.out.String())
		ch := p.changed
		p.mu.Unlock()
		if found {
			return watchFound
		}
		select {
		case <-ch:
		case <-p.done:
			if ok(p.Output()) {
				return watchFound
			}
			return watchExited
		case <-deadline:
			return watchTimeout
		}
	}
}

// cloneLineRE matches a clone's whole line in a parent's output ("[clone
// K on HOST] " for a clone an agent runs). A clone's
// line can land inside one of the parent's (the console holds it only
// lineWait for the parent's line to end, and a guest under TCG can be
// slower), so it may start anywhere.
var cloneLineRE = regexp.MustCompile(`(sfvmm clone \d+: |\[clone \d+( on [^\]\n]+)?\] )[^\n]*\n`)

// printed reports whether out has want, or has it once the clones' lines
// are taken out of the parent's.
func printed(out, want string) bool {
	return strings.Contains(out, want) || strings.Contains(cloneLineRE.ReplaceAllString(out, ""), want)
}

// type sends a line to the process's stdin (the guest's console).
func (p *proc) typeLine(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		t.Fatalf("write to %s: %v", p.cmd.Path, err)
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s still running after %v:\n%s\n%s", p.cmd.Path, timeout, p.Output(), sfvmmStacks())
	}
	return p.cmd.ProcessState.ExitCode()
}

// sfvmmStacks describes where every sfvmm thread on the host waits (state,
// wait channel, kernel stack where root may read it): what a hung test
// needs to say.
func sfvmmStacks() string {
	var b strings.Builder
	b.WriteString("sfvmm threads:\n")
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, pd := range procs {
		comm, _ := os.ReadFile(pd + "/comm")
		if strings.TrimSpace(string(comm)) != "sfvmm" {
			continue
		}
		cmdline, _ := os.ReadFile(pd + "/cmdline")
		fmt.Fprintf(&b, "process %s: %s\n", filepath.Base(pd), bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
		tasks, _ := filepath.Glob(pd + "/task/[0-9]*")
		for _, td := range tasks {
			stat, _ := os.ReadFile(td + "/stat")
			wchan, _ := os.ReadFile(td + "/wchan")
			stack, _ := os.ReadFile(td + "/stack")
			state := ""
			if f := strings.Fields(string(stat)); len(f) > 2 {
				state = f[2]
			}
			fmt.Fprintf(&b, "  thread %s %s %s\n%s", filepath.Base(td), state, wchan, stack)
		}
	}
	return b.String()
}

// run runs a command to completion within timeout and returns its output
// and exit code.
func run(t *testing.T, timeout time.Duration, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out), 0
}

// A parent's console line is found with clones' lines, local or relayed
// by an agent, cut into it.
func TestPrinted(t *testing.T) {
	out := "forktest: parent oversfvmm clone 2: running (ticket 1, restored in 1.6s)\n" +
		"wrote the regi[clone 1 on host0] forktest: clone 1 running, touching the region in 10 s\n" +
		"on's fi[clone 3] forktest: clone 3 running\nrst page\n"
	if !printed(out, "forktest: parent overwrote the region's first page") {
		t.Errorf("the parent's line not found in %q", out)
	}
}
