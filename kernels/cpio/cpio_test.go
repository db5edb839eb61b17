package cpio

import (
	"bytes"
	"errors"
	"io"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

type entry struct {
	hdr  Header
	data string
}

// sample is every kind of entry the initramfs builder writes.
func sample(t *testing.T) ([]byte, []entry) {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	steps := []error{
		w.Dir("bin", 0o755),
		w.File("bin/busybox", 0o755, []byte("#!fake busybox\n")),
		w.Symlink("bin/sh", "busybox"),
		w.Dir("dev", 0o755),
		w.CharDev("dev/console", 0o600, 5, 1),
		w.File("/init", 0o755, []byte("#!/bin/sh\necho hi\n")), // leading "/" dropped
		w.File("empty", 0o644, nil),
		w.File("odd", 0o600, []byte("abc")), // data needs padding
		w.Close(),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	want := []entry{
		{Header{Name: "bin", Mode: TypeDir | 0o755, NLink: 2}, ""},
		{Header{Name: "bin/busybox", Mode: TypeReg | 0o755, NLink: 1, Size: 15}, "#!fake busybox\n"},
		{Header{Name: "bin/sh", Mode: TypeSymlink | 0o777, NLink: 1, Size: 7}, "busybox"},
		{Header{Name: "dev", Mode: TypeDir | 0o755, NLink: 2}, ""},
		{Header{Name: "dev/console", Mode: TypeChar | 0o600, NLink: 1, RDevMajor: 5, RDevMinor: 1}, ""},
		{Header{Name: "init", Mode: TypeReg | 0o755, NLink: 1, Size: 18}, "#!/bin/sh\necho hi\n"},
		{Header{Name: "empty", Mode: TypeReg | 0o644, NLink: 1}, ""},
		{Header{Name: "odd", Mode: TypeReg | 0o600, NLink: 1, Size: 3}, "abc"},
	}
	return buf.Bytes(), want
}

func TestRoundTrip(t *testing.T) {
	archive, want := sample(t)
	if len(archive)%512 != 0 {
		t.Errorf("archive is %d bytes, not a multiple of 512", len(archive))
	}
	r := NewReader(bytes.NewReader(archive))
	var got []entry
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Next after %d entries: %v", len(got), err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("read %s: %v", h.Name, err)
		}
		got = append(got, entry{*h, string(data)})
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}
}

// TestGolden pins the exact bytes of a one-file archive.
func TestGolden(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.File("a", 0o644, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := "070701" + "00000001" + "000081a4" + "00000000" + "00000000" + "00000001" +
		"00000000" + "00000002" + "00000000" + "00000000" + "00000000" + "00000000" +
		"00000002" + "00000000" + "a\x00" + "hi\x00\x00" +
		"070701" + "00000000" + "00000000" + "00000000" + "00000000" + "00000001" +
		"00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "00000000" +
		"0000000b" + "00000000" + "TRAILER!!!\x00" + "\x00"
	want += strings.Repeat("\x00", 512-len(want))
	if got := buf.String(); got != want {
		t.Errorf("archive bytes:\n got %q\nwant %q", got, want)
	}
}

// TestCpioTool checks the archive against GNU cpio, where installed; the
// parsing tests above cover the format either way.
func TestCpioTool(t *testing.T) {
	path, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("cpio(1) not installed")
	}
	archive, want := sample(t)
	cmd := exec.Command(path, "-t", "--quiet")
	cmd.Stdin = bytes.NewReader(archive)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	var names []string
	for _, e := range want {
		names = append(names, e.hdr.Name)
	}
	if got := strings.Fields(string(out)); !reflect.DeepEqual(got, names) {
		t.Errorf("cpio -t lists %q, want %q", got, names)
	}
}

func TestWriterErrors(t *testing.T) {
	tests := []struct {
		name string
		do   func(w *Writer) error
		want string
	}{
		{"short data", func(w *Writer) error {
			if err := w.WriteHeader(&Header{Name: "f", Mode: TypeReg, Size: 4}); err != nil {
				return err
			}
			w.Write([]byte("ab"))
			return w.Close()
		}, "missing 2 bytes"},
		{"long data", func(w *Writer) error {
			if err := w.WriteHeader(&Header{Name: "f", Mode: TypeReg, Size: 1}); err != nil {
				return err
			}
			_, err := w.Write([]byte("ab"))
			return err
		}, ErrWriteTooLong.Error()},
		{"empty name", func(w *Writer) error { return w.Dir("/", 0o755) }, "bad entry name"},
		{"no type", func(w *Writer) error { return w.WriteHeader(&Header{Name: "x", Mode: 0o644}) }, "no file type"},
		{"after close", func(w *Writer) error {
			w.Close()
			return w.Dir("d", 0o755)
		}, "after close"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do(NewWriter(io.Discard))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestReaderTruncated(t *testing.T) {
	archive, _ := sample(t)
	r := NewReader(bytes.NewReader(archive[:200]))
	var err error
	for err == nil {
		_, err = r.Next()
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated archive: got %v, want io.ErrUnexpectedEOF", err)
	}
}
