package boot

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// The kernel cache keeps what Unpack makes. Unlike the loaders, which only
// write guest memory, it writes host files: a directory of the user's,
// shared by every sfvmm that boots the same image.

// DefaultKernelCache is where `sfvmm run` keeps unpacked kernels:
// $XDG_CACHE_HOME/sfvmm/kernels, else ~/.cache/sfvmm/kernels; "" where
// neither is known.
func DefaultKernelCache() string {
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "sfvmm", "kernels")
}

// keptKernels is how many unpacked kernels a cache keeps (the most
// recently used); each is some 60 MiB.
const keptKernels = 4

// UnpackedKernel returns the ELF vmlinux inside the bzImage f, of which st
// is the Stat and head the first HeaderBytes, unpacked once into the cache
// directory dir ("": none) and reused while f's file is unchanged
// (same path, inode, size, mtime and ctime: hashing the image would cost
// more than the boot saves under emulation). Where dir cannot be used the
// kernel is unpacked into an unlinked temporary file, and log says why.
// A bzImage whose payload sfvmm cannot decompress returns the reason; one
// whose header locates no payload, neither file nor error: the bzImage
// loader then says what is wrong with it.
func UnpackedKernel(f *os.File, st os.FileInfo, head []byte, dir string, log *slog.Logger) (*os.File, error) {
	if _, _, err := Payload(head, st.Size()); err != nil {
		return nil, nil
	}
	if dir == "" {
		return unpackTemp(f, st.Size())
	}
	name, err := cacheName(f.Name(), st)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, name)
	if c, err := os.Open(path); err == nil {
		now := time.Now()
		os.Chtimes(path, now, now) // most recently used
		return c, nil
	}
	var out *os.File
	err = os.MkdirAll(dir, 0o700)
	if err == nil {
		out, err = os.CreateTemp(dir, name+".tmp*")
	}
	if err != nil {
		log.Warn(fmt.Sprintf("kernel cache: %v; unpacking the kernel into a temporary file", err))
		return unpackTemp(f, st.Size())
	}
	if err := unpackTo(out, f, st.Size()); err != nil {
		os.Remove(out.Name())
		return nil, err
	}
	// Renamed whole: a concurrent sfvmm finds the old name absent or the
	// complete kernel, never a part of it.
	if err := os.Rename(out.Name(), path); err != nil {
		os.Remove(out.Name())
		log.Warn(fmt.Sprintf("kernel cache: %v", err))
	}
	trimCache(dir)
	return out, nil
}

// unpackTemp unpacks the kernel into a temporary file that is unlinked at
// once: it lives as long as the returned file.
func unpackTemp(f *os.File, size int64) (*os.File, error) {
	tmp, err := os.CreateTemp("", "sfvmm-vmlinux-*")
	if err != nil {
		return nil, fmt.Errorf("unpack kernel: %w", err)
	}
	os.Remove(tmp.Name())
	if err := unpackTo(tmp, f, size); err != nil {
		return nil, err
	}
	return tmp, nil
}

// unpackTo unpacks the size-byte bzImage f into out and rewinds out for
// reading; on an error it closes out.
func unpackTo(out, f *os.File, size int64) error {
	_, err := Unpack(f, size, out)
	if err == nil {
		_, err = out.Seek(0, io.SeekStart)
	}
	if err != nil {
		out.Close()
	}
	return err
}

// cacheName names the unpacked kernel of the image at path.
func cacheName(path string, st os.FileInfo) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return "", errors.New("kernel cache: no inode information")
	}
	key := fmt.Sprintf("%s\x00%d\x00%d\x00%d\x00%d.%d\x00%d.%d", abs, sys.Dev, sys.Ino, st.Size(),
		sys.Mtim.Sec, sys.Mtim.Nsec, sys.Ctim.Sec, sys.Ctim.Nsec)
	return fmt.Sprintf("vmlinux-%x", sha256.Sum256([]byte(key)))[:8+32], nil
}

// trimCache removes all but the keptKernels most recently used kernels, and
// what a crashed sfvmm left half unpacked.
func trimCache(dir string) {
	matches, _ := filepath.Glob(filepath.Join(dir, "vmlinux-*"))
	type entry struct {
		path string
		used time.Time
	}
	var es []entry
	for _, m := range matches {
		fi, err := os.Stat(m)
		switch {
		case err != nil:
		case filepath.Ext(m) == "":
			es = append(es, entry{m, fi.ModTime()})
		case time.Since(fi.ModTime()) > time.Hour:
			os.Remove(m)
		}
	}
	slices.SortFunc(es, func(a, b entry) int { return b.used.Compare(a.used) })
	for _, e := range es[min(len(es), keptKernels):] {
		os.Remove(e.path)
	}
}
