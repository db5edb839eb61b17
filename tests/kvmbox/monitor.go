package main

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"time"
)

// stallState asks a stalled sandbox's QEMU, through its monitor socket,
// where its CPU is: the registers twice, a second apart (a halted CPU
// keeps its RIP, a spinning one moves it), and the local APIC (a timer
// interrupt pending or not). It is what the stall's cause is to be found
// from, and it is best effort: whatever came before an error or the
// deadline, never more than a few seconds.
func stallState(sock string, deadline time.Duration) string {
	var out strings.Builder
	c, err := net.DialTimeout("unix", sock, deadline)
	if err != nil {
		return fmt.Sprintf("monitor: %v\n", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	r := bufio.NewReader(c)
	if _, err := readPrompt(r); err != nil {
		return fmt.Sprintf("monitor: no prompt: %v\n", err)
	}
	for i, cmd := range []string{"info registers", "", "info registers", "info lapic"} {
		if cmd == "" {
			time.Sleep(time.Second)
			continue
		}
		fmt.Fprintf(&out, "=== %s (%d)\n", cmd, i)
		if _, err := fmt.Fprintf(c, "%s\n", cmd); err != nil {
			fmt.Fprintf(&out, "monitor: %v\n", err)
			break
		}
		s, err := readPrompt(r)
		// The first line is the monitor's echo of the command, drawn
		// with terminal escapes.
		if _, answer, ok := strings.Cut(s, "\n"); ok {
			s = answer
		}
		out.WriteString(s)
		if err != nil {
			fmt.Fprintf(&out, "\nmonitor: %v\n", err)
			break
		}
		out.WriteString("\n")
	}
	return out.String()
}

// readPrompt reads the monitor's output up to its next "(qemu) " prompt,
// which it returns without, and without carriage returns.
func readPrompt(r *bufio.Reader) (string, error) {
	const prompt = "(qemu) "
	var b strings.Builder
	for !strings.HasSuffix(b.String(), prompt) {
		c, err := r.ReadByte()
		if err != nil {
			return strings.ReplaceAll(b.String(), "\r", ""), err
		}
		b.WriteByte(c)
	}
	return strings.ReplaceAll(strings.TrimSuffix(b.String(), prompt), "\r", ""), nil
}
