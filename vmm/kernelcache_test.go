package vmm

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// gzipBzImage writes a bzImage holding no setup code, just the header
// fields that locate its payload: the kernel, gzipped.
func gzipBzImage(t *testing.T, path string, kernel []byte) {
	t.Helper()
	var z bytes.Buffer
	w := gzip.NewWriter(&z)
	w.Write(kernel)
	w.Close()
	img := make([]byte, 5*512, 5*512+z.Len()+4)
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x020f)
	img[0x1f1] = 4                                                // setup sectors: the payload starts at 5*512
	binary.LittleEndian.PutUint32(img[0x24c:], uint32(z.Len()+4)) // payload_length (offset 0)
	img = append(img, z.Bytes()...)
	img = binary.LittleEndian.AppendUint32(img, uint32(len(kernel)))
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
}

// unpackFile runs unpackedKernel on the image at path and returns what it
// gave and what it logged.
func unpackFile(t *testing.T, path, dir string) (kernel []byte, logged string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, head, err := headOf(f)
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	vf, err := unpackedKernel(f, st, head, dir, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil || vf == nil {
		t.Fatalf("unpackedKernel = %v, %v", vf, err)
	}
	defer vf.Close()
	if kernel, err = io.ReadAll(vf); err != nil {
		t.Fatal(err)
	}
	return kernel, log.String()
}

func cached(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "vmlinux-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestKernelCache(t *testing.T) {
	img := filepath.Join(t.TempDir(), "bzImage")
	kernel := append([]byte("\x7fELF"), bytes.Repeat([]byte("kernel "), 5000)...)
	gzipBzImage(t, img, kernel)
	dir := filepath.Join(t.TempDir(), "cache")

	got, logged := unpackFile(t, img, dir)
	if !bytes.Equal(got, kernel) || logged != "" {
		t.Fatalf("first boot: %d bytes (want %d), logged %q", len(got), len(kernel), logged)
	}
	files := cached(t, dir)
	if len(files) != 1 {
		t.Fatalf("cache holds %v, want one kernel", files)
	}
	// The second boot takes the cached kernel as it is: mark it to tell.
	if err := os.WriteFile(files[0], []byte("\x7fELF cached"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := unpackFile(t, img, dir); string(got) != "\x7fELF cached" {
		t.Fatalf("second boot unpacked again instead of using the cache")
	}
	// A changed image is unpacked afresh.
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(img, future, future); err != nil {
		t.Fatal(err)
	}
	if got, _ := unpackFile(t, img, dir); !bytes.Equal(got, kernel) {
		t.Fatalf("a changed image got the old cached kernel")
	}
	if files := cached(t, dir); len(files) != 2 {
		t.Fatalf("cache holds %v, want two kernels", files)
	}
	// Only the most recently used kernels stay.
	for i := range keptKernels + 2 {
		when := future.Add(time.Duration(i+1) * time.Minute)
		if err := os.Chtimes(img, when, when); err != nil {
			t.Fatal(err)
		}
		unpackFile(t, img, dir)
	}
	if files := cached(t, dir); len(files) != keptKernels {
		t.Fatalf("cache holds %d kernels, want %d", len(files), keptKernels)
	}
}

// Without a usable cache directory the kernel is unpacked all the same,
// into a file nobody else sees, and the log says why.
func TestKernelCacheUnusable(t *testing.T) {
	img := filepath.Join(t.TempDir(), "bzImage")
	kernel := append([]byte("\x7fELF"), bytes.Repeat([]byte{7}, 9000)...)
	gzipBzImage(t, img, kernel)
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	got, logged := unpackFile(t, img, filepath.Join(notDir, "cache"))
	if !bytes.Equal(got, kernel) || !strings.Contains(logged, "temporary file") {
		t.Fatalf("unusable cache: %d bytes (want %d), logged %q", len(got), len(kernel), logged)
	}
	if got, logged := unpackFile(t, img, ""); !bytes.Equal(got, kernel) || logged != "" {
		t.Fatalf("no cache: %d bytes (want %d), logged %q", len(got), len(kernel), logged)
	}
}
