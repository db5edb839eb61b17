package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// line is one line a child printed, with when the bench read it.
type line struct {
	at     time.Time
	stderr bool
	text   string
}

// proc is a child process whose output is kept line by line so that the
// bench can wait, with a deadline, for a line matching a pattern. It runs in
// its own process group (QEMU's exec: migration starts sh and cat), which
// kill ends as a whole.
type proc struct {
	name  string
	cmd   *exec.Cmd
	start time.Time // just before the exec

	mu      sync.Mutex // guards lines, exited, waitErr and changed
	lines   []line
	exited  bool
	waitErr error
	changed chan struct{} // closed and replaced whenever lines or exited change

	done chan struct{} // closed once the process has been reaped
}

// startProc starts name with args; its stdout and stderr are recorded.
func startProc(name string, args ...string) (*proc, error) {
	p := &proc{name: name, changed: make(chan struct{}), done: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	// Setpgid: kill reaches the whole group. Pdeathsig: children do not
	// outlive a bench that is killed outright.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	track(p)
	var readers sync.WaitGroup
	readers.Add(2)
	go p.read(stdout, false, &readers)
	go p.read(stderr, true, &readers)
	go func() {
		readers.Wait()
		err := p.cmd.Wait()
		p.mu.Lock()
		p.exited, p.waitErr = true, err
		p.notifyLocked()
		p.mu.Unlock()
		untrack(p)
		close(p.done)
	}()
	return p, nil
}

func (p *proc) read(r io.Reader, isStderr bool, wg *sync.WaitGroup) {
	defer wg.Done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		now := time.Now()
		text := strings.TrimRight(sc.Text(), "\r")
		p.mu.Lock()
		p.lines = append(p.lines, line{at: now, stderr: isStderr, text: text})
		p.notifyLocked()
		p.mu.Unlock()
	}
	io.Copy(io.Discard, r) // a line over 1 MiB: keep the pipe drained
}

func (p *proc) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// mark returns the number of lines read so far, for waitLine's from.
func (p *proc) mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// waitLine waits up to timeout for a line from index from on that matches
// re (on stdout, or on stderr if wantStderr) and returns it, its index and
// its submatches. It fails, naming what did not happen and showing the
// output's tail, when the process exits or the time runs out first.
func (p *proc) waitLine(from int, re *regexp.Regexp, wantStderr bool, timeout time.Duration, what string) (line, int, []string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := from; ; {
		p.mu.Lock()
		for ; i < len(p.lines); i++ {
			l := p.lines[i]
			if l.stderr != wantStderr {
				continue
			}
			if m := re.FindStringSubmatch(l.text); m != nil {
				p.mu.Unlock()
				return l, i, m, nil
			}
		}
		exited, werr, changed := p.exited, p.waitErr, p.changed
		p.mu.Unlock()
		if exited {
			return line{}, 0, nil, fmt.Errorf("%s: %s exited (%v) before it printed %s:\n%s", what, p.name, werr, re, p.tail(30))
		}
		select {
		case <-changed:
		case <-deadline.C:
			return line{}, 0, nil, fmt.Errorf("%s: %s printed no %s within %v:\n%s", what, p.name, re, timeout, p.tail(30))
		}
	}
}

// tail returns the last n lines of output, stderr lines marked.
func (p *proc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	ls := p.lines
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	var b bytes.Buffer
	for _, l := range ls {
		if l.stderr {
			b.WriteString("  [stderr] ")
		} else {
			b.WriteString("  ")
		}
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	if b.Len() == 0 {
		return "  (no output)\n"
	}
	return b.String()
}

// exitedWithin reports whether the process ends within d, and how.
func (p *proc) exitedWithin(d time.Duration) (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.waitErr
	case <-time.After(d):
		return false, nil
	}
}

// kill ends the process group with SIGKILL and waits (bounded) for it to be
// reaped.
func (p *proc) kill() error {
	if p.cmd.Process == nil {
		return nil
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) still not reaped 10s after SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// Every child still running, so that an error path or a signal to the
// bench leaves none behind.
var (
	childrenMu sync.Mutex
	children   = map[*proc]bool{}
)

func track(p *proc)   { childrenMu.Lock(); children[p] = true; childrenMu.Unlock() }
func untrack(p *proc) { childrenMu.Lock(); delete(children, p); childrenMu.Unlock() }

// killAll ends every child still running.
func killAll() {
	childrenMu.Lock()
	ps := make([]*proc, 0, len(children))
	for p := range children {
		ps = append(ps, p)
	}
	childrenMu.Unlock()
	for _, p := range ps {
		if err := p.kill(); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
	}
}

// waitFile waits up to timeout for path to exist (a control socket).
func waitFile(ctx context.Context, path string, timeout time.Duration, p *proc) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if ok, werr := p.exitedWithin(0); ok {
			return fmt.Errorf("%s exited (%v) before creating %s:\n%s", p.name, werr, path, p.tail(30))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not create %s within %v", p.name, path, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}
