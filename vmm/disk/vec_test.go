package disk

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestBatch(t *testing.T) {
	page := make([]byte, 4096)
	many := make([][]byte, iovMax+5)
	for i := range many {
		many[i] = page
	}
	big := make([]byte, keepPMax+100)
	for _, c := range []struct {
		name      string
		bufs      [][]byte
		maxBytes  int
		wantBufs  int
		wantBytes int
	}{
		{"IOV_MAX buffers at most", many, 0, iovMax, iovMax * 4096},
		{"bytes bound cuts at a buffer's end", many, 8192, 2, 8192},
		{"bytes bound cuts inside a buffer", [][]byte{page, big}, keepPMax, 2, keepPMax},
		{"under both bounds", [][]byte{page, page}, keepPMax, 2, 8192},
	} {
		got := batch(c.bufs, c.maxBytes)
		if len(got) != c.wantBufs || total(got) != c.wantBytes {
			t.Errorf("%s: %d buffers, %d bytes; want %d, %d", c.name, len(got), total(got), c.wantBufs, c.wantBytes)
		}
	}
	// A cut buffer must not change the caller's list.
	bufs := [][]byte{page, big}
	batch(bufs, keepPMax)
	if len(bufs[1]) != len(big) {
		t.Error("batch changed the caller's buffers")
	}
}

// TestRawVec reads and writes through rawVec with buffers that follow one
// another in memory (one iovec), that do not, and that are empty, and a
// request larger than one call moves.
func TestRawVec(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([]byte, 2*keepPMax+3*4096)
	for i := range want {
		want[i] = byte(i*13 + i/4096)
	}
	l := &layer{f: f, local: true}
	op := func(nr uintptr) vecOp { return l.op(nr, true) }
	if op(unix.SYS_PREADV).maxBytes != keepPMax {
		t.Fatal("a local layer that keeps its P does not use rawVec")
	}
	// Written from pieces of one buffer (adjacent), an empty one and a
	// copy elsewhere.
	tail := bytes.Clone(want[len(want)-4096:])
	src := [][]byte{want[:100], want[100 : keepPMax+5], nil, want[keepPMax+5 : len(want)-4096], tail}
	if err := vecFull(op(unix.SYS_PWRITEV), int(f.Fd()), src, 0); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the file differs from what was written")
	}
	back := make([]byte, len(want))
	dst := [][]byte{back[:4096], {}, back[4096 : keepPMax+4096], back[keepPMax+4096:]}
	if err := vecFull(op(unix.SYS_PREADV), int(f.Fd()), dst, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, want) {
		t.Fatal("what was read differs from the file")
	}
	// Past the end of the file: a short read, then none.
	if err := vecFull(op(unix.SYS_PREADV), int(f.Fd()), [][]byte{make([]byte, 8192)}, int64(len(want)-4096)); err == nil {
		t.Error("a read past the end of the file succeeded")
	}
}

// TestKeepPOnlyLocal: a layer off local storage never keeps its P.
func TestKeepPOnlyLocal(t *testing.T) {
	if (&layer{}).op(unix.SYS_PREADV, true).maxBytes != 0 {
		t.Error("a layer off local storage keeps its P")
	}
}

// TestEmptyBuffersFirst: more empty buffers than one call takes, then
// data, still move the data.
func TestEmptyBuffersFirst(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bufs := append(make([][]byte, iovMax+3), []byte("data"))
	for _, keepP := range []bool{false, true} {
		l := &layer{f: f, local: true}
		if err := vecFull(l.op(unix.SYS_PWRITEV, keepP), int(f.Fd()), bufs, 0); err != nil {
			t.Fatalf("keepP=%v: %v", keepP, err)
		}
	}
	if got, _ := os.ReadFile(f.Name()); string(got) != "data" {
		t.Errorf("the file holds %q, want \"data\"", got)
	}
}
