package main

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sfvmm/sfvmm/kernels/cpio"
)

// readArchive returns name -> header and name -> data.
func readArchive(t *testing.T, b []byte) (map[string]cpio.Header, map[string]string, []string) {
	t.Helper()
	hdrs, data := map[string]cpio.Header{}, map[string]string{}
	var order []string
	r := cpio.NewReader(bytes.NewReader(b))
	for {
		h, err := r.Next()
		if err == io.EOF {
			return hdrs, data, order
		}
		if err != nil {
			t.Fatal(err)
		}
		d, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name], data[h.Name] = *h, string(d)
		order = append(order, h.Name)
	}
}

func TestBuild(t *testing.T) {
	host := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(host, "tree", "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(host, "tree", "sub", "f"), []byte("in tree"), 0o600))
	must(t, os.Symlink("sub/f", filepath.Join(host, "tree", "link")))
	must(t, os.WriteFile(filepath.Join(host, "tool"), []byte("tool bytes"), 0o755))

	var buf bytes.Buffer
	files := []mapping{
		{filepath.Join(host, "tool"), "usr/local/bin/tool"},
		{filepath.Join(host, "tree"), "opt/tree"},
	}
	if err := build(&buf, []byte("BUSYBOX"), files); err != nil {
		t.Fatal(err)
	}
	hdrs, data, order := readArchive(t, buf.Bytes())

	checks := []struct {
		name string
		mode uint32
		data string
	}{
		{"bin/busybox", cpio.TypeReg | 0o755, "BUSYBOX"},
		{"init", cpio.TypeReg | 0o755, string(initScript)},
		{"dev/console", cpio.TypeChar | 0o600, ""},
		{"tmp", cpio.TypeDir | 0o1777, ""},
		{"usr/local", cpio.TypeDir | 0o755, ""},
		{"usr/local/bin/tool", cpio.TypeReg | 0o755, "tool bytes"},
		{"opt/tree/sub/f", cpio.TypeReg | 0o600, "in tree"},
		{"opt/tree/link", cpio.TypeSymlink | 0o777, "sub/f"},
	}
	for _, c := range checks {
		h, ok := hdrs[c.name]
		if !ok {
			t.Errorf("%s missing; archive has %q", c.name, order)
			continue
		}
		if h.Mode != c.mode || data[c.name] != c.data {
			t.Errorf("%s: mode %#o data %q, want mode %#o data %q", c.name, h.Mode, data[c.name], c.mode, c.data)
		}
	}
	if h := hdrs["dev/console"]; h.RDevMajor != 5 || h.RDevMinor != 1 {
		t.Errorf("dev/console is %d:%d, want 5:1", h.RDevMajor, h.RDevMinor)
	}
	// The kernel does not create parents: each must come before its children.
	seen := map[string]bool{}
	for _, name := range order {
		if dir := filepath.Dir(name); dir != "." && !seen[dir] {
			t.Errorf("%s comes before its directory %s", name, dir)
		}
		if seen[name] {
			t.Errorf("%s written twice", name)
		}
		seen[name] = true
	}

	var again bytes.Buffer
	if err := build(&again, []byte("BUSYBOX"), files); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two builds of the same input differ")
	}
}

func TestMappingSet(t *testing.T) {
	tests := []struct {
		arg  string
		want mapping
		err  bool
	}{
		{"a.ko:/lib/modules/a.ko", mapping{"a.ko", "lib/modules/a.ko"}, false},
		{"/x/y:bin/y", mapping{"/x/y", "bin/y"}, false},
		{"d:/opt//d/", mapping{"d", "opt/d"}, false},
		{"nocolon", mapping{}, true},
		{":/x", mapping{}, true},
		{"x:", mapping{}, true},
		{"x:/", mapping{}, true},
		{"x:/../etc", mapping{}, true},
	}
	for _, tt := range tests {
		var m mappings
		err := m.Set(tt.arg)
		if (err != nil) != tt.err {
			t.Errorf("Set(%q) error = %v, want error %v", tt.arg, err, tt.err)
			continue
		}
		if !tt.err && !reflect.DeepEqual(m, mappings{tt.want}) {
			t.Errorf("Set(%q) = %v, want %v", tt.arg, m, tt.want)
		}
	}
}

// TestInitCmdline runs init.sh's command-line parser under the host's
// busybox sh, the shell it runs under in the guest.
func TestInitCmdline(t *testing.T) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (apt-get install busybox-static)")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "init.sh")
	must(t, os.WriteFile(script, initScript, 0o755))
	tests := []struct{ cmdline, want string }{
		{`console=ttyS0 sfvmm.run="echo hi; uname -r" quiet`, "has_run=1 run=echo hi; uname -r"},
		{`sfvmm.run=true quiet`, "has_run=1 run=true"},
		{`sfvmm.run="" quiet`, "has_run=1 run="},
		{`console=ttyS0 quiet`, "has_run= run="},
		{`xsfvmm.run="no" sfvmm.run="yes it is"`, "has_run=1 run=yes it is"},
	}
	for _, tt := range tests {
		cl := filepath.Join(dir, "cmdline")
		must(t, os.WriteFile(cl, []byte(tt.cmdline+"\n"), 0o644))
		cmd := exec.Command(bb, "sh", script)
		cmd.Env = append(os.Environ(), "SFVMM_INIT_PARSE="+cl)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", tt.cmdline, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != tt.want {
			t.Errorf("cmdline %s: got %q, want %q", tt.cmdline, got, tt.want)
		}
	}
}

// elf64 returns a minimal ELF64 image with one program header per type.
func elf64(types ...uint32) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	binary.Write(&b, le, struct {
		Type, Machine                                        uint16
		Version                                              uint32
		Entry, Phoff, Shoff                                  uint64
		Flags                                                uint32
		Ehsize, Phentsize, Phnum, Shentsize, Shnum, Shstrndx uint16
	}{Type: 2, Machine: 62, Version: 1, Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: uint16(len(types))})
	for _, typ := range types {
		binary.Write(&b, le, struct {
			Type, Flags                             uint32
			Off, Vaddr, Paddr, Filesz, Memsz, Align uint64
		}{Type: typ})
	}
	return b.Bytes()
}

func TestCheckStatic(t *testing.T) {
	const ptLoad, ptInterp = 1, 3
	if err := checkStatic(elf64(ptLoad)); err != nil {
		t.Errorf("static binary refused: %v", err)
	}
	if err := checkStatic(elf64(ptInterp, ptLoad)); err == nil || !strings.Contains(err.Error(), "busybox-static") {
		t.Errorf("dynamic binary: got %v, want an error naming busybox-static", err)
	}
	if err := checkStatic([]byte("#!/bin/sh\n")); err == nil {
		t.Error("a script was accepted as busybox")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// -ext4 puts the --file entries, files and folders, into an ext4 image.
func TestDiskImage(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "tree", "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "tree", "sub", "a"), []byte("in a folder\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "one"), []byte("one file\n"), 0o644)
	img := filepath.Join(dir, "disk.img")
	files := []mapping{{filepath.Join(dir, "tree"), "data"}, {filepath.Join(dir, "one"), "etc/one"}}
	if err := diskImage(img, "16M", files); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{"/data/sub/a": "in a folder\n", "/etc/one": "one file\n"} {
		out, err := exec.Command("/usr/sbin/debugfs", "-R", "cat "+path, img).Output()
		if err != nil || string(out) != want {
			t.Errorf("%s in the image: %q, %v", path, out, err)
		}
	}
	for _, bad := range []string{"M", "-1M", "12X", "0"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("size %q accepted", bad)
		}
	}
}
