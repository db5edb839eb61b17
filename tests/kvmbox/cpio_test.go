package main

import (
	"bytes"
	"strconv"
	"testing"
)

type cpioEntry struct {
	name         string
	mode         uint32
	rmaj, rmin   uint32
	data         string
	ino, nlink   uint32
	headerOffset int
}

// readCPIO is a minimal newc reader, enough to check what cpioWriter wrote
// the way the kernel's initramfs unpacker reads it.
func readCPIO(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	for {
		if off%4 != 0 {
			t.Fatalf("entry at offset %d is not 4-aligned", off)
		}
		if len(b) < off+110 || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at offset %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("header field %d at %d: %v", i, off, err)
			}
			return uint32(v)
		}
		e := cpioEntry{ino: field(0), mode: field(1), nlink: field(4), rmaj: field(9), rmin: field(10), headerOffset: off}
		size, namesize := int(field(6)), int(field(11))
		name := b[off+110 : off+110+namesize]
		if name[len(name)-1] != 0 {
			t.Fatalf("name at %d not NUL-terminated", off)
		}
		e.name = string(name[:len(name)-1])
		off += (110 + namesize + 3) &^ 3
		e.data = string(b[off : off+size])
		off += (size + 3) &^ 3
		if e.name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestCPIOWriter(t *testing.T) {
	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	w.Dir("bin", 0o755)
	w.File("bin/busybox", 0o755, []byte("12345")) // odd size: needs padding
	w.Symlink("bin/sh", "busybox")
	w.CharDev("dev/console", 0o600, 5, 1)
	w.File("empty", 0o644, nil)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got := readCPIO(t, buf.Bytes())
	want := []cpioEntry{
		{name: "bin", mode: 0o040755, nlink: 2},
		{name: "bin/busybox", mode: 0o100755, nlink: 1, data: "12345"},
		{name: "bin/sh", mode: 0o120777, nlink: 1, data: "busybox"},
		{name: "dev/console", mode: 0o020600, nlink: 1, rmaj: 5, rmin: 1},
		{name: "empty", mode: 0o100644, nlink: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	inos := map[uint32]bool{}
	for i, g := range got {
		w := want[i]
		if g.name != w.name || g.mode != w.mode || g.nlink != w.nlink || g.data != w.data || g.rmaj != w.rmaj || g.rmin != w.rmin {
			t.Errorf("entry %d = %+v, want %+v", i, g, w)
		}
		if inos[g.ino] || g.ino == 0 {
			t.Errorf("entry %s: inode %d is zero or reused", g.name, g.ino)
		}
		inos[g.ino] = true
	}
}

func TestCPIOWriterDeterministic(t *testing.T) {
	build := func() []byte {
		var buf bytes.Buffer
		w := newCPIOWriter(&buf)
		w.File("init", 0o755, []byte("#!/bin/sh\n"))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	a, b := build(), build()
	if !bytes.Equal(a, b) {
		t.Fatal("same input gave different archives; the initramfs cache relies on that")
	}
	// Header of the first entry, field by field: ino 1, mode 0100755,
	// uid, gid 0, nlink 1, mtime 0, size 10, dev 0/0, rdev 0/0, namesize 5.
	const hdr = "070701" + "00000001" + "000081ed" + "00000000" + "00000000" + "00000001" + "00000000" +
		"0000000a" + "00000000" + "00000000" + "00000000" + "00000000" + "00000005" + "00000000"
	if got := string(a[:110]); got != hdr {
		t.Fatalf("header\n got %s\nwant %s", got, hdr)
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.n == 0 {
		return 0, bytes.ErrTooLarge
	}
	f.n--
	return len(p), nil
}

func TestCPIOWriterError(t *testing.T) {
	w := newCPIOWriter(&failWriter{n: 1})
	w.Dir("a", 0o755)
	w.Dir("b", 0o755)
	if err := w.Close(); err == nil {
		t.Fatal("Close returned nil after a failed write")
	}
}
