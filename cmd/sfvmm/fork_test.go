package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/snapshot"
)

func TestPrefixWriter(t *testing.T) {
	var out bytes.Buffer
	p := &lines{prefix: []byte("[clone 2] "), emit: writeTo(&out)}
	for _, s := range []string{"hel", "lo\r\nwor", "ld\n", "\n", "tail"} {
		p.Write([]byte(s))
	}
	if got, want := out.String(), "[clone 2] hello\r\n[clone 2] world\n[clone 2] \n"; got != want {
		t.Errorf("before flush: %q, want %q", got, want)
	}
	p.Flush()
	if got := out.String(); !strings.HasSuffix(got, "[clone 2] tail") {
		t.Errorf("after flush: %q", got)
	}
	out.Reset()
	p.Write(bytes.Repeat([]byte("x"), 2*maxLine))
	if out.Len() < maxLine {
		t.Errorf("a line without newline of %d bytes was held back (%d written)", 2*maxLine, out.Len())
	}
}

// sfvmm clone refuses what is not a fork descriptor, with a clear message
// and before touching KVM.
func TestCloneRefusesBadDescriptors(t *testing.T) {
	snap, err := snapshot.Encode(snapshot.Header{CPUs: 1, MemBytes: 1 << 20,
		Memory: []snapshot.MemoryRegion{{GPA: 0, Size: 1 << 20, Pages: snapshot.NewBitmap(256)}}},
		&vmm.MachineState{Config: vmm.MachineConfig{CPUs: 1, MemBytes: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	corrupt := append([]byte(nil), snap...)
	corrupt[len(corrupt)/2] ^= 0xff
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing", []string{"--descriptor", "/nonexistent/image.sfd", "--id", "1"}, "no such file"},
		{"garbage", []string{"--descriptor", writeFile(t, "g.sfd", []byte("not a descriptor")), "--id", "1"}, "snapshot corrupt"},
		{"corrupt", []string{"--descriptor", writeFile(t, "c.sfd", corrupt), "--id", "1"}, "snapshot corrupt"},
		{"a snapshot", []string{"--descriptor", writeFile(t, "s.sfd", snap), "--id", "1"}, "not a fork descriptor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(sfvmmBin, append([]string{"clone"}, tc.args...)...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("sfvmm clone %v: %v, want exit status 1\n%s", tc.args, err, stderr.String())
			}
			if msg := stderr.String(); !strings.Contains(msg, tc.want) || strings.Contains(msg, "panic") {
				t.Errorf("stderr %q does not mention %q (or panicked)", msg, tc.want)
			}
		})
	}
	out, err := exec.Command(sfvmmBin, "clone", "--id", "0", "--descriptor", filepath.Join(t.TempDir(), "x")).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "usage") {
		t.Errorf("clone --id 0: %v\n%s", err, out)
	}
}

func TestForkCommandUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--clones", "2"},
		{"--api-sock", "/x", "--clones", "2", "--kill", "1"},
		{"--api-sock", "/x"},
	} {
		out, err := exec.Command(sfvmmBin, append([]string{"fork"}, args...)...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "usage") {
			t.Errorf("sfvmm fork %v: %v\n%s", args, err, out)
		}
	}
	out, err := exec.Command(sfvmmBin, "fork", "--api-sock", filepath.Join(t.TempDir(), "none.sock"), "--clones", "1").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "none.sock") {
		t.Errorf("fork through a missing socket: %v\n%s", err, out)
	}
}

// A clone's line waits for the parent to end its current line, but not
// for ever.
func TestConsoleKeepsLinesWhole(t *testing.T) {
	var out bytes.Buffer
	c := newConsole(&out)
	lw := &lines{emit: c.writeLine}
	c.Write([]byte("parent: hal"))
	done := make(chan struct{})
	go func() {
		lw.Write([]byte("[clone 1] a line\n[clone 1] part"))
		close(done)
	}()
	time.Sleep(20 * time.Millisecond)
	c.Write([]byte("f a line\n"))
	<-done
	lw.Flush()
	if got, want := out.String(), "parent: half a line\n[clone 1] a line\n[clone 1] part"; got != want {
		t.Errorf("console: %q, want %q", got, want)
	}
	out.Reset()
	c.Write([]byte("prompt # "))
	start := time.Now()
	lw.Write([]byte("[clone 2] late\n"))
	if d := time.Since(start); d < lineWait/2 || d > 5*lineWait {
		t.Errorf("a clone's line behind an unfinished parent line waited %v, want about %v", d, lineWait)
	}
	if got := out.String(); got != "prompt # [clone 2] late\n" {
		t.Errorf("console: %q", got)
	}
}
