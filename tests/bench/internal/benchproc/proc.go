// Package benchproc runs the processes a benchmark drives (VMMs, their
// clones, QEMU) and watches their output line by line, with deadlines, so
// that a benchmark can time when a guest printed something and fail with
// the output's tail when it did not.
package benchproc

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

// Line is one line a child printed, with when the bench read it.
type Line struct {
	At     time.Time
	Stderr bool
	Text   string
}

// Proc is a child process whose output is kept line by line so that the
// bench can wait, with a deadline, for a line matching a pattern. It runs in
// its own process group (QEMU's exec: migration starts sh and cat), which
// Kill ends as a whole.
type Proc struct {
	Name  string
	Cmd   *exec.Cmd
	Start time.Time // just before the exec

	mu      sync.Mutex // guards lines, exited, waitErr and changed
	lines   []Line
	exited  bool
	waitErr error
	changed chan struct{} // closed and replaced whenever lines or exited change

	done chan struct{} // closed once the process has been reaped
}

// Start starts name with args; its stdout and stderr are recorded.
func Start(name string, args ...string) (*Proc, error) {
	p := &Proc{Name: name, changed: make(chan struct{}), done: make(chan struct{})}
	p.Cmd = exec.Command(name, args...)
	// Setpgid: kill reaches the whole group. Pdeathsig: children do not
	// outlive a bench that is killed outright.
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := p.Cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := p.Cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p.Start = time.Now()
	if err := p.Cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	track(p)
	var readers sync.WaitGroup
	readers.Add(2)
	go p.read(stdout, false, &readers)
	go p.read(stderr, true, &readers)
	go func() {
		readers.Wait()
		err := p.Cmd.Wait()
		p.mu.Lock()
		p.exited, p.waitErr = true, err
		p.notifyLocked()
		p.mu.Unlock()
		untrack(p)
		close(p.done)
	}()
	return p, nil
}

func (p *Proc) read(r io.Reader, isStderr bool, wg *sync.WaitGroup) {
	defer wg.Done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		now := time.Now()
		text := strings.TrimRight(sc.Text(), "\r")
		p.mu.Lock()
		p.lines = append(p.lines, Line{At: now, Stderr: isStderr, Text: text})
		p.notifyLocked()
		p.mu.Unlock()
	}
	io.Copy(io.Discard, r) // a line over 1 MiB: keep the pipe drained
}

func (p *Proc) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Mark returns the number of lines read so far, for waitLine's from.
func (p *Proc) Mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// WaitLine waits up to timeout for a line from index from on that matches
// re (on stdout, or on stderr if wantStderr) and returns it, its index and
// its submatches. It fails, naming what did not happen and showing the
// output's tail, when the process exits or the time runs out first.
func (p *Proc) WaitLine(from int, re *regexp.Regexp, wantStderr bool, timeout time.Duration, what string) (Line, int, []string, error) {
	return p.WaitLineUnless(from, re, wantStderr, nil, timeout, what)
}

// WaitLineUnless is WaitLine that also fails as soon as a line on either
// stream matches abort (nil: none), such as a guest's crash report, rather
// than waiting out the timeout.
func (p *Proc) WaitLineUnless(from int, re *regexp.Regexp, wantStderr bool, abort *regexp.Regexp, timeout time.Duration, what string) (Line, int, []string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := from; ; {
		p.mu.Lock()
		for ; i < len(p.lines); i++ {
			l := p.lines[i]
			if abort != nil && abort.MatchString(l.Text) {
				p.mu.Unlock()
				return Line{}, 0, nil, fmt.Errorf("%s: %s", what, l.Text)
			}
			if l.Stderr != wantStderr {
				continue
			}
			if m := re.FindStringSubmatch(l.Text); m != nil {
				p.mu.Unlock()
				return l, i, m, nil
			}
		}
		exited, werr, changed := p.exited, p.waitErr, p.changed
		p.mu.Unlock()
		if exited {
			return Line{}, 0, nil, fmt.Errorf("%s: %s exited (%v) before it printed %s:\n%s", what, p.Name, werr, re, p.Tail(30))
		}
		select {
		case <-changed:
		case <-deadline.C:
			return Line{}, 0, nil, fmt.Errorf("%s: %s printed no %s within %v:\n%s", what, p.Name, re, timeout, p.Tail(30))
		}
	}
}

// Lines returns a copy of the lines from index from up to (not including)
// to.
func (p *Proc) Lines(from, to int) []Line {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Line(nil), p.lines[from:to]...)
}

// Tail returns the last n lines of output, stderr lines marked.
func (p *Proc) Tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	ls := p.lines
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	var b bytes.Buffer
	for _, l := range ls {
		if l.Stderr {
			b.WriteString("  [stderr] ")
		} else {
			b.WriteString("  ")
		}
		b.WriteString(l.Text)
		b.WriteByte('\n')
	}
	if b.Len() == 0 {
		return "  (no output)\n"
	}
	return b.String()
}

// ExitedWithin reports whether the process ends within d, and how.
func (p *Proc) ExitedWithin(d time.Duration) (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.waitErr
	case <-time.After(d):
		return false, nil
	}
}

// Kill ends the process group with SIGKILL and waits (bounded) for it to be
// reaped.
func (p *Proc) Kill() error {
	if p.Cmd.Process == nil {
		return nil
	}
	syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) still not reaped 10s after SIGKILL", p.Name, p.Cmd.Process.Pid)
	}
}

// Every child still running, so that an error path or a signal to the
// bench leaves none behind.
var (
	childrenMu sync.Mutex
	children   = map[*Proc]bool{}
)

func track(p *Proc)   { childrenMu.Lock(); children[p] = true; childrenMu.Unlock() }
func untrack(p *Proc) { childrenMu.Lock(); delete(children, p); childrenMu.Unlock() }

// KillAll ends every child still running.
func KillAll() {
	childrenMu.Lock()
	ps := make([]*Proc, 0, len(children))
	for p := range children {
		ps = append(ps, p)
	}
	childrenMu.Unlock()
	for _, p := range ps {
		if err := p.Kill(); err != nil {
			fmt.Fprintln(os.Stderr, "benchproc:", err)
		}
	}
}

// WaitFile waits up to timeout for path to exist (a control socket).
func WaitFile(ctx context.Context, path string, timeout time.Duration, p *Proc) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if ok, werr := p.ExitedWithin(0); ok {
			return fmt.Errorf("%s exited (%v) before creating %s:\n%s", p.Name, werr, path, p.Tail(30))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not create %s within %v", p.Name, path, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}
