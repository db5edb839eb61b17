// Command initramfs writes the initramfs sfvmm boots Linux test guests
// with: a static busybox as /bin/busybox, /init (init.sh, which installs the
// applet links at boot), a /dev/console node and any extra files.
//
//	go run ./kernels/initramfs -o OUT.cpio [--file HOSTPATH:GUESTPATH ...]
//
// A --file whose host path is a directory is copied recursively.
//
//	go run ./kernels/initramfs -o OUT.img -ext4 SIZE [--file HOSTPATH:GUESTPATH ...]
//
// writes an ext4 disk image of SIZE bytes (64M, 1G) holding only the
// --file entries instead (mkfs.ext4 -d, from Debian's e2fsprogs), for
// sfvmm's --disk. An extra
// file may replace a default one (such as /init): the kernel unpacks the
// archive in order and the later entry wins. The output is deterministic:
// every entry has mtime 0 and owner root.
package main

import (
	"bytes"
	"debug/elf"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sfvmm/sfvmm/kernels/cpio"
	"github.com/sfvmm/sfvmm/kernels/diskimage"
)

//go:embed init.sh
var initScript []byte

// mapping is one --file HOSTPATH:GUESTPATH.
type mapping struct{ host, guest string }

type mappings []mapping

func (m *mappings) String() string { return fmt.Sprint(*m) }

func (m *mappings) Set(s string) error {
	host, guest, ok := strings.Cut(s, ":")
	if !ok || host == "" || guest == "" {
		return fmt.Errorf("%q is not HOSTPATH:GUESTPATH", s)
	}
	g, err := guestPath(guest)
	if err != nil {
		return err
	}
	*m = append(*m, mapping{host, g})
	return nil
}

// guestPath turns a guest path into an archive name: relative, clean, and
// never escaping the root.
func guestPath(p string) (string, error) {
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return "", fmt.Errorf("guest path %q contains ..", p)
		}
	}
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	if c == "" {
		return "", fmt.Errorf("guest path %q is the root", p)
	}
	return c, nil
}

func main() {
	out := flag.String("o", "", "write the archive to `file` (required)")
	busybox := flag.String("busybox", "/bin/busybox", "the static busybox `binary` to include")
	var files mappings
	flag.Var(&files, "file", "also add `HOSTPATH:GUESTPATH` (a file, or a directory copied recursively); repeatable")
	ext4 := flag.String("ext4", "", "write an ext4 disk image of `SIZE` bytes (64M, 1G) holding the --file entries, not an archive")
	flag.Parse()
	if *out == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	var err error
	if *ext4 != "" {
		err = diskImage(*out, *ext4, files)
	} else {
		err = run(*out, *busybox, files)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "initramfs:", err)
		os.Exit(1)
	}
}

func run(out, busybox string, files []mapping) error {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("read busybox (Debian: apt-get install busybox-static): %w", err)
	}
	if err := checkStatic(bb); err != nil {
		return fmt.Errorf("%s: %w", busybox, err)
	}
	var buf bytes.Buffer
	if err := build(&buf, bb, files); err != nil {
		return err
	}
	// Write beside the target and rename, so a failed run leaves no half archive.
	tmp, err := os.CreateTemp(filepath.Dir(out), ".initramfs-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}

// diskImage writes an ext4 image of size (a number with an optional K, M
// or G) holding files.
func diskImage(out, size string, files []mapping) error {
	n, err := parseSize(size)
	if err != nil {
		return fmt.Errorf("-ext4: %w", err)
	}
	root, err := os.MkdirTemp("", "initramfs-ext4-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	for _, m := range files {
		dst := filepath.Join(root, filepath.FromSlash(m.guest))
		if st, err := os.Stat(m.host); err == nil && st.IsDir() {
			if err := os.CopyFS(dst, os.DirFS(m.host)); err != nil {
				return fmt.Errorf("add %s: %w", m.host, err)
			}
			continue
		}
		b, err := os.ReadFile(m.host)
		if err != nil {
			return fmt.Errorf("add %s: %w", m.host, err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			return err
		}
	}
	return diskimage.Ext4(out, root, n)
}

// parseSize reads 64M, 1G, 4096 (bytes).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > 1<<50/mult {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, or with K, M or G", s)
	}
	return n * mult, nil
}

// checkStatic refuses a dynamically linked busybox (Debian's "busybox"
// package rather than "busybox-static"): the initramfs has no libc.
func checkStatic(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("not an ELF binary: %w", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("busybox is dynamically linked; install busybox-static")
		}
	}
	return nil
}

// Directories every guest gets: the mount points init uses and the
// directories `busybox --install -s` puts applet links in.
var defaultDirs = []struct {
	name string
	perm uint32
}{
	{"bin", 0o755}, {"sbin", 0o755}, {"usr", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755},
	{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"run", 0o755}, {"etc", 0o755},
	{"root", 0o700}, {"tmp", 0o1777},
}

func build(w io.Writer, busybox []byte, files []mapping) error {
	a := &archive{cw: cpio.NewWriter(w), dirs: map[string]bool{}}
	for _, d := range defaultDirs { // parents first
		a.dirs[d.name] = true
		if err := a.cw.Dir(d.name, d.perm); err != nil {
			return err
		}
	}
	if err := a.cw.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := a.file("bin/busybox", 0o755, busybox); err != nil {
		return err
	}
	if err := a.file("init", 0o755, initScript); err != nil {
		return err
	}
	for _, m := range files {
		if err := a.addHost(m.host, m.guest); err != nil {
			return fmt.Errorf("add %s: %w", m.host, err)
		}
	}
	return a.cw.Close()
}

// archive writes entries, creating each parent directory once, first.
type archive struct {
	cw   *cpio.Writer
	dirs map[string]bool // directories already written
}

func (a *archive) mkdirAll(dir string) error {
	if dir == "." || dir == "" || a.dirs[dir] {
		return nil
	}
	if err := a.mkdirAll(path.Dir(dir)); err != nil {
		return err
	}
	a.dirs[dir] = true
	return a.cw.Dir(dir, 0o755)
}

func (a *archive) file(name string, perm uint32, data []byte) error {
	if err := a.mkdirAll(path.Dir(name)); err != nil {
		return err
	}
	return a.cw.File(name, perm, data)
}

// addHost adds a host file, symlink or directory tree as guest.
func (a *archive) addHost(host, guest string) error {
	return filepath.WalkDir(host, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(host, p)
		if err != nil {
			return err
		}
		name := path.Join(guest, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		perm := uint32(info.Mode().Perm())
		switch {
		case d.IsDir():
			if err := a.mkdirAll(path.Dir(name)); err != nil {
				return err
			}
			if !a.dirs[name] {
				a.dirs[name] = true
				return a.cw.Dir(name, perm)
			}
			return nil
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := a.mkdirAll(path.Dir(name)); err != nil {
				return err
			}
			return a.cw.Symlink(name, target)
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return a.file(name, perm, data)
		default:
			return fmt.Errorf("%s: unsupported file type %v", p, d.Type())
		}
	})
}
