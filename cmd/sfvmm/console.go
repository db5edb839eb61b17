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

// lineWriter passes a clone's output to a console a line at a time.
type lineWriter struct {
	c   *console
	mu  sync.Mutex // guards buf
	buf []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		if err := l.c.writeLine(l.buf[:i+1]); err != nil {
			return len(p), err
		}
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) >= maxLine {
		return len(p), l.flushLocked()
	}
	return len(p), nil
}

// Flush writes what is left of a last line.
func (l *lineWriter) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.flushLocked()
}

func (l *lineWriter) flushLocked() error {
	if len(l.buf) == 0 {
		return nil
	}
	err := l.c.writeLine(l.buf)
	l.buf = l.buf[:0]
	return err
}
