package boot

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeGzipBzImage writes a bzImage whose payload is kernel, gzipped.
func writeGzipBzImage(t *testing.T, path string, kernel []byte) {
	t.Helper()
	if err := os.WriteFile(path, bzWithPayload(gzipped(kernel), uint32(len(kernel))), 0o644); err != nil {
		t.Fatal(err)
	}
}

// unpackFile runs UnpackedKernel on the image at path and returns what it
// gave and what it logged.
func unpackFile(t *testing.T, path, dir string) (kernel []byte, logged string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, min(st.Size(), HeaderBytes))
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	vf, err := UnpackedKernel(f, st, head, dir, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil || vf == nil {
		t.Fatalf("UnpackedKernel = %v, %v", vf, err)
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
	writeGzipBzImage(t, img, kernel)
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
	writeGzipBzImage(t, img, kernel)
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
