package main

import (
	"bytes"
	"io"
	"sync"
	"time"
)

// console is the terminal a parent and its clones share. The parent's
// serial output passes straight through (a shell prompt has no newline
// and must show at once); a clone's lines wait until the parent has ended
// its current line, or lineWait has passed, so that the lines of different
// machines do not mix.
type console struct {
	w    io.Writer
	mu   sync.Mutex // guards midLine and serializes writes to w
	cond *sync.Cond
	// midLine: the parent's last byte written was not a newline.
	midLine bool
}

// lineWait bounds how long a clone's line waits for the parent's.
const lineWait = 200 * time.Millisecond

func newConsole(w io.Writer) *console {
	c := &console{w: w}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// Write is the parent's output.
func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.w.Write(p)
	if n > 0 {
		c.midLine = p[n-1] != '\n'
		c.cond.Broadcast()
	}
	return n, err
}

// writeLine writes a clone's whole line.
func (c *console) writeLine(line []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.midLine {
		expired := false
		t := time.AfterFunc(lineWait, func() {
			c.mu.Lock()
			expired = true
			c.cond.Broadcast()
			c.mu.Unlock()
		})
		for c.midLine && !expired {
			c.cond.Wait()
		}
		t.Stop()
	}
	_, err := c.w.Write(line)
	return err
}

// lines passes what is written to it on a whole line at a time, each line
// started with prefix: a clone prefixes its console with its ID, and the
// parent hands a clone's output to its console by lines. A partial line
// waits for its end, a Flush, or maxLine bytes (a guest printing without
// newlines still shows its output).
type lines struct {
	prefix []byte
	emit   func(line []byte) error
	mu     sync.Mutex // guards line; the UART writes from vCPU threads
	line   []byte     // the current line, prefix included, not yet emitted
}

// maxLine bounds a held partial line.
const maxLine = 4096

// writeTo emits lines to w.
func writeTo(w io.Writer) func([]byte) error {
	return func(line []byte) error {
		_, err := w.Write(line)
		return err
	}
}

func (l *lines) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(b)
	for len(b) > 0 {
		if len(l.line) == 0 {
			l.line = append(l.line, l.prefix...)
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			l.line = append(l.line, b...)
			if len(l.line) >= maxLine {
				return n, l.flushLocked()
			}
			return n, nil
		}
		l.line = append(l.line, b[:i+1]...)
		b = b[i+1:]
		if err := l.flushLocked(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// Flush emits a partial line.
func (l *lines) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.flushLocked()
}

func (l *lines) flushLocked() error {
	if len(l.line) == 0 {
		return nil
	}
	err := l.emit(l.line)
	l.line = l.line[:0]
	return err
}
