package main

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A fake monitor that answers as QEMU's does: a banner and a prompt, then
// for each command its echo, the answer with carriage returns, a prompt.
func TestStallState(t *testing.T) {
	sock := fakeMonitor(t, func(c net.Conn) {
		c.Write([]byte("QEMU 10.0.13 monitor - type 'help' for more information\r\n(qemu) "))
		r := bufio.NewReader(c)
		rip := 0x1000
		for {
			cmd, err := r.ReadString('\n')
			if err != nil {
				return
			}
			cmd = strings.TrimSpace(cmd)
			answer := "LVT0\t 0x00010700 active-hi edge  masked  ExtINT (vec 0)"
			if cmd == "info registers" {
				answer = "RAX=0 RIP=" + strings.Repeat("f", 4) + string(rune('0'+rip%10)) + " HLT=1"
				rip++
			}
			c.Write([]byte(cmd + "\r\n" + strings.ReplaceAll(answer, "\n", "\r\n") + "\r\n(qemu) "))
		}
	})
	got := stallState(sock, 5*time.Second)
	for _, want := range []string{"=== info registers (0)\nRAX=0 RIP=ffff6 HLT=1\n", "=== info registers (2)", "RIP=ffff7", "=== info lapic (3)", "LVT0"} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "\r") || strings.Contains(got, "(qemu)") {
		t.Errorf("carriage returns or prompts left in:\n%q", got)
	}
}

// A monitor that is not there, or never answers, costs at most the
// deadline and says so.
func TestStallStateNoMonitor(t *testing.T) {
	dir := t.TempDir()
	if got := stallState(filepath.Join(dir, "none.sock"), time.Second); !strings.Contains(got, "monitor:") {
		t.Errorf("no monitor: %q", got)
	}
	sock := fakeMonitor(t, func(net.Conn) { time.Sleep(3 * time.Second) })
	start := time.Now()
	got := stallState(sock, time.Second)
	if d := time.Since(start); d > 2*time.Second || !strings.Contains(got, "no prompt") {
		t.Errorf("a mute monitor: %q after %v", got, d)
	}
}

// fakeMonitor listens on a Unix socket of its own and hands the first
// connection to serve, closing it after.
func fakeMonitor(t *testing.T, serve func(net.Conn)) string {
	sock := filepath.Join(t.TempDir(), "m.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	return sock
}
