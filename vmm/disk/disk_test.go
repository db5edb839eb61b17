package disk

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// image writes a disk image of size bytes, each byte a function of its
// offset, and returns its path and contents.
func image(t *testing.T, size int) (string, []byte) {
	t.Helper()
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*7 + i/4096)
	}
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, b
}

func readAll(t *testing.T, d *Disk) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if _, err := d.ReadVec([][]byte{b}, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// op applies one random write or discard to d and to the model want.
func op(t *testing.T, r *rand.Rand, d *Disk, want []byte) {
	t.Helper()
	off := r.IntN(len(want))
	n := 1 + r.IntN(min(3*BlockSize, len(want)-off))
	if r.IntN(8) == 0 {
		if err := d.Discard(int64(off), int64(n)); err != nil {
			t.Fatal(err)
		}
		first := (off + BlockSize - 1) / BlockSize * BlockSize
		end := (off + n) / BlockSize * BlockSize
		if off+n == len(want) {
			end = len(want)
		}
		if end > first {
			clear(want[first:end])
		}
		return
	}
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	if _, err := d.WriteVec(split(r, p), int64(off)); err != nil {
		t.Fatal(err)
	}
	copy(want[off:], p)
}

// split cuts p into up to 4 pieces at random places, some empty.
func split(r *rand.Rand, p []byte) [][]byte {
	var bufs [][]byte
	for range 3 {
		k := r.IntN(len(p) + 1)
		bufs = append(bufs, p[:k])
		p = p[k:]
	}
	return append(bufs, p)
}

// readVec reads the whole disk with ReadVec into pieces.
func readVec(t *testing.T, r *rand.Rand, d *Disk) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if _, err := d.ReadVec(split(r, b), 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestForkLayers checks the disk against a flat model through writes,
// discards, compactions and freezes: after each freeze the parent goes on
// changing while the frozen state still reads as it was frozen, a clone opened
// from it writes to its own overlay only, and closing the parent puts
// every write into its image.
func TestForkLayers(t *testing.T) {
	// Both ways a layer's file is read and written: through the runtime's
	// system-call entry, and keeping the P (KeepP), whose calls merge
	// adjacent buffers.
	for _, keepP := range []bool{false, true} {
		t.Run(fmt.Sprintf("keepP=%v", keepP), func(t *testing.T) { testForkLayers(t, keepP) })
	}
}

func testForkLayers(t *testing.T, keepP bool) {
	// A size that is not whole blocks exercises the short last block.
	const size = 64*BlockSize + 3*SectorSize
	path, want := image(t, size)
	dir := t.TempDir()
	d, err := Open(path, false, dir)
	if err != nil {
		t.Fatal(err)
	}
	if keepP {
		d.KeepP()
		if !d.layers[0].local {
			t.Fatalf("the test's image is not on local storage (TMPDIR %s): the calls that keep the P would go untested", os.TempDir())
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	type frozen struct {
		st   State
		want []byte
	}
	var frozens []frozen
	for round := 0; round < 6; round++ {
		for range 40 {
			op(t, r, d, want)
		}
		// What a fork does once the last freeze's clones have ended:
		// the frozen overlays fold, so layers do not pile up.
		if err := d.Compact(); err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, d); !bytes.Equal(got, want) {
			t.Fatalf("round %d: the disk differs from the model", round)
		}
		if got := readVec(t, r, d); !bytes.Equal(got, want) {
			t.Fatalf("round %d: the disk read in pieces differs from the model", round)
		}
		st, err := d.Freeze()
		if err != nil {
			t.Fatal(err)
		}
		if n := len(st.Layers); n > 2 {
			t.Fatalf("round %d: %d frozen layers after Compact, want at most 2 (the base and one overlay)", round, n)
		}
		frozens = append(frozens, frozen{st, bytes.Clone(want)})
		// A clone of this freeze: its writes stay its own.
		c, err := OpenState(st, "", dir)
		if err != nil {
			t.Fatal(err)
		}
		if keepP {
			c.KeepP()
		}
		cwant := bytes.Clone(want)
		for range 30 {
			op(t, r, c, cwant)
		}
		if got := readVec(t, r, c); !bytes.Equal(got, cwant) {
			t.Fatalf("round %d: the clone's disk differs from its model", round)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// The latest freeze still reads as it was while the parent wrote on
	// (earlier ones were folded by Compact, as no clone read them).
	for i, f := range frozens[len(frozens)-1:] {
		c, err := OpenState(f.st, "", dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, c); !bytes.Equal(got, f.want) {
			t.Errorf("freeze %d: reads differently now", i)
		}
		c.Close()
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("the image does not hold the parent's writes after Close")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Errorf("overlays left behind: %v", left)
	}
}

// TestFreezeUnwritten: a freeze with nothing written since the last one
// adds no layer.
func TestFreezeUnwritten(t *testing.T) {
	path, _ := image(t, 8*BlockSize)
	d, err := Open(path, false, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	a, _ := d.Freeze()
	b, _ := d.Freeze()
	if len(a.Layers) != 1 || len(b.Layers) != 1 {
		t.Fatalf("frozen layers %d then %d, want 1 and 1", len(a.Layers), len(b.Layers))
	}
	d.WriteVec([][]byte{{1}}, 5)
	if c, _ := d.Freeze(); len(c.Layers) != 2 {
		t.Fatalf("after a write, %d frozen layers, want 2", len(c.Layers))
	}
}

func TestCopyTo(t *testing.T) {
	path, want := image(t, 16*BlockSize)
	d, err := Open(path, false, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r := rand.New(rand.NewPCG(3, 4))
	for range 10 {
		op(t, r, d, want)
	}
	d.Freeze()
	for range 10 {
		op(t, r, d, want)
	}
	out := filepath.Join(t.TempDir(), "copy.img")
	if err := d.CopyTo(out); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, want) {
		t.Error("the copy differs from the disk")
	}
	if err := d.CopyTo(out); err == nil {
		t.Error("CopyTo replaced an existing file")
	}
}

func TestReadOnly(t *testing.T) {
	path, want := image(t, 4*BlockSize)
	d, err := Open(path, true, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.WriteVec([][]byte{{1}}, 0); err != ErrReadOnly {
		t.Errorf("write: %v, want ErrReadOnly", err)
	}
	if err := d.Discard(0, BlockSize); err != ErrReadOnly {
		t.Errorf("discard: %v, want ErrReadOnly", err)
	}
	st, _ := d.Freeze()
	c, err := OpenState(st, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.ReadOnly() || !bytes.Equal(readAll(t, c), want) {
		t.Error("a clone of a read-only disk is not the same read-only disk")
	}
}

// TestBadInput: images and frozen states that cannot be a disk are
// refused with what is wrong; accesses outside the disk fail.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	odd := filepath.Join(dir, "odd.img")
	os.WriteFile(odd, make([]byte, 1000), 0o600)
	empty := filepath.Join(dir, "empty.img")
	os.WriteFile(empty, nil, 0o600)
	for _, c := range []struct{ path, want string }{
		{odd, "not whole 512-byte sectors"},
		{empty, "empty image"},
		{dir, "not a regular file"},
		{filepath.Join(dir, "none"), "no such file"},
	} {
		if _, err := Open(c.path, true, dir); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%s): %v, want %q", c.path, err, c.want)
		}
	}
	path, _ := image(t, 8*BlockSize)
	small, _ := image(t, 4*BlockSize)
	for _, c := range []struct {
		st   State
		want string
	}{
		{State{Size: 8 * BlockSize}, "no layers"},
		{State{Size: 8 * BlockSize, Layers: []Layer{{Path: small}}}, "the disk has"},
		{State{Size: 8 * BlockSize, Layers: []Layer{{Path: path, Blocks: []byte{1}}}}, "base image with a block map"},
		{State{Size: 8 * BlockSize, Layers: []Layer{{Path: path}, {Path: path, Blocks: []byte{1, 2, 3}}}}, "block map"},
		{State{Size: 100, Layers: []Layer{{Path: path}}}, "size 100"},
	} {
		if _, err := OpenState(c.st, "", dir); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("OpenState(%+v): %v, want %q", c.st, err, c.want)
		}
	}
	d, err := Open(path, false, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.ReadVec([][]byte{make([]byte, 2)}, 8*BlockSize-1); err == nil {
		t.Error("a read past the end succeeded")
	}
	if _, err := d.WriteVec([][]byte{make([]byte, 1)}, -1); err == nil {
		t.Error("a write before the start succeeded")
	}
	// A guest's read with no data room (only its status byte) reads
	// nothing, and is no error.
	if n, err := d.ReadVec([][]byte{{}}, 0); n != 0 || err != nil {
		t.Errorf("an empty read: %d, %v; want 0, nil", n, err)
	}
}

// A restored machine's disk (its base another's, read-only) folds its
// frozen overlays into its lowest one, never into the base.
func TestCompactRestored(t *testing.T) {
	path, want := image(t, 16*BlockSize)
	base, _ := os.ReadFile(path)
	dir := t.TempDir()
	d, err := OpenState(State{Size: 16 * BlockSize, Layers: []Layer{{Path: path}}}, "", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r := rand.New(rand.NewPCG(5, 6))
	for range 4 {
		for range 10 {
			op(t, r, d, want)
		}
		if err := d.Compact(); err != nil {
			t.Fatal(err)
		}
		// The base, the overlay the others fold into, the one just
		// frozen.
		if st, _ := d.Freeze(); len(st.Layers) > 3 {
			t.Fatalf("%d frozen layers, want at most 3", len(st.Layers))
		}
	}
	if got := readAll(t, d); !bytes.Equal(got, want) {
		t.Error("the disk differs from the model")
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, base) {
		t.Error("Compact wrote the restored machine's base")
	}
}

// A clone's disk unlinks its overlay at once and goes on using it.
func TestUnlink(t *testing.T) {
	path, want := image(t, 8*BlockSize)
	dir := t.TempDir()
	d, err := OpenState(State{Size: 8 * BlockSize, Layers: []Layer{{Path: path}}}, "", dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Unlink(); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Errorf("files left after Unlink: %v", left)
	}
	r := rand.New(rand.NewPCG(7, 8))
	for range 20 {
		op(t, r, d, want)
	}
	if got := readAll(t, d); !bytes.Equal(got, want) {
		t.Error("the disk differs from the model after Unlink")
	}
	if err := d.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}
