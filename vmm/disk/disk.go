// Package disk is a virtual disk as sfvmm keeps it: a raw image file and,
// once the disk has been frozen for a fork, copy-on-write overlays above it.
//
// A fork freezes the disk as it is at that instant: the layers it has
// then are never written again, the parent goes on writing to a new
// overlay, and each clone reads the frozen layers and writes to an overlay
// of its own. An overlay is a sparse file as large as the disk and a
// bitmap of the blocks it holds; a block it lacks reads from the layers
// below. A disk whose image the user gave writable puts its overlays back
// into the image when it closes (after its clones have ended), so that the
// image holds every write the parent made.
//
// It is not a virtio device (virtio/blk is) and knows nothing of guests.
package disk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/vmm/localfs"
	"github.com/sfvmm/sfvmm/vmm/snapshot"
)

// BlockSize is the unit overlays hold: a guest write of part of a block
// copies the rest from below first.
const BlockSize = 4096

// SectorSize is the unit a disk's size comes in.
const SectorSize = 512

// MaxSize bounds a disk: the block bitmap of a larger one would not fit
// snapshot.MaxPages.
const MaxSize = snapshot.MaxPages * BlockSize

// Layer is one frozen layer of a disk, as a descriptor keeps it.
type Layer struct {
	Path string
	// Blocks is the marshalled bitmap (snapshot.Bitmap) of the blocks
	// an overlay holds; empty for the base image, which holds them all.
	Blocks []byte
}

// State is a frozen disk: a plain value, what a clone or a restored
// snapshot opens.
type State struct {
	Size     uint64
	ReadOnly bool    // the guest may not write
	Layers   []Layer // the base image first
}

// Disk is a virtual disk. Its methods are safe for concurrent use.
type Disk struct {
	size     uint64
	readOnly bool
	// commit: the base is the user's writable image, which takes the
	// overlays back at Close.
	commit bool
	dir    string // where overlays are made

	// mu guards layers and the top layer's bitmap: reads share it,
	// writes and freezes take it alone.
	mu     sync.RWMutex
	layers []*layer // the base first; only the top one is ever written
	closed bool
	// keepP: reads and writes of layers on local filesystems keep the
	// serving goroutine's P (KeepP).
	keepP atomic.Bool
}

type layer struct {
	// r reads the layer: its file f, or for a clone on another host
	// than its parent's, the fork's page service (Source); f is then nil.
	r      io.ReaderAt
	f      *os.File
	path   string
	local  bool             // f is on local storage (localfs.Is)
	blocks *snapshot.Bitmap // nil for the base: it holds every block
	own    bool             // made by this disk, removed at Close
	// dirty: written since the last Flush synced it (guarded by
	// Disk.mu, written only with it held alone).
	dirty bool
}

// Open opens the raw image at path. A writable disk is written in place
// until it is frozen; its overlays are then made in dir ("" is the
// system's temporary directory).
func Open(path string, readOnly bool, dir string) (*Disk, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", path, err)
	}
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(abs, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	size, err := imageSize(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("disk %s: %w", path, err)
	}
	return &Disk{size: size, readOnly: readOnly, commit: !readOnly, dir: dir,
		layers: []*layer{{r: f, f: f, path: abs, local: localfs.Is(f)}}}, nil
}

// imageSize is the size of an image, which must be whole sectors.
func imageSize(f *os.File) (uint64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	switch size := fi.Size(); {
	case !fi.Mode().IsRegular():
		return 0, errors.New("not a regular file")
	case size == 0:
		return 0, errors.New("empty image")
	case size%SectorSize != 0:
		return 0, fmt.Errorf("%d bytes, not whole %d-byte sectors", size, SectorSize)
	case uint64(size) > MaxSize:
		return 0, fmt.Errorf("%d bytes, more than the %d a disk may have", size, uint64(MaxSize))
	default:
		return uint64(size), nil
	}
}

// Source reads layer i of a frozen disk where its file is out of reach
// (on the parent's host); nil opens the files. Its size is the disk's.
// A source that is an io.Closer is closed with the disk.
type Source func(i int) (io.ReaderAt, error)

// OpenState opens a frozen disk for a clone or a restored snapshot: its
// layers read-only and, unless the disk is read-only, a new overlay in dir
// for the guest's writes, removed at Close. Relative layer paths are taken
// from base.
func OpenState(st State, base, dir string) (*Disk, error) {
	return OpenStateFrom(st, base, dir, nil)
}

// OpenStateFrom is OpenState with the layers read from src.
func OpenStateFrom(st State, base, dir string, src Source) (_ *Disk, err error) {
	if len(st.Layers) == 0 {
		return nil, errors.New("disk: no layers")
	}
	if st.Size == 0 || st.Size%SectorSize != 0 || st.Size > MaxSize {
		return nil, fmt.Errorf("disk: size %d", st.Size)
	}
	d := &Disk{size: st.Size, readOnly: st.ReadOnly, dir: dir}
	defer func() {
		if err != nil {
			d.closeFiles()
		}
	}()
	for i, l := range st.Layers {
		p := l.Path
		if !filepath.IsAbs(p) {
			p = filepath.Join(base, p)
		}
		nl := &layer{path: p}
		if src != nil {
			if nl.r, err = src(i); err != nil {
				return nil, fmt.Errorf("disk layer %d: %w", i, err)
			}
			d.layers = append(d.layers, nl)
		} else {
			f, err := os.Open(p)
			if err != nil {
				return nil, fmt.Errorf("disk layer %d: %w", i, err)
			}
			nl.r, nl.f, nl.local = f, f, localfs.Is(f)
			d.layers = append(d.layers, nl)
			size, err := imageSize(f)
			if err != nil {
				return nil, fmt.Errorf("disk layer %d %s: %w", i, p, err)
			}
			if size != st.Size {
				return nil, fmt.Errorf("disk layer %d %s: %d bytes, the disk has %d", i, p, size, st.Size)
			}
		}
		if i == 0 {
			if len(l.Blocks) != 0 {
				return nil, fmt.Errorf("disk layer 0 %s: a base image with a block map", p)
			}
			continue
		}
		nl.blocks = new(snapshot.Bitmap)
		if err := nl.blocks.UnmarshalBinary(l.Blocks); err != nil {
			return nil, fmt.Errorf("disk layer %d %s: block map: %w", i, p, err)
		}
		if nl.blocks.Len() != d.blocks() {
			return nil, fmt.Errorf("disk layer %d %s: block map of %d blocks, the disk has %d", i, p, nl.blocks.Len(), d.blocks())
		}
	}
	if !d.readOnly {
		if err := d.pushOverlay(); err != nil {
			return nil, err
		}
	}
	return d, nil
}

func (d *Disk) blocks() uint64 { return (d.size + BlockSize - 1) / BlockSize }

// Size is the disk's size in bytes.
func (d *Disk) Size() uint64 { return d.size }

// ReadOnly says the guest may not write.
func (d *Disk) ReadOnly() bool { return d.readOnly }

// pushOverlay puts a new, empty overlay on top; d.mu held or d unshared.
func (d *Disk) pushOverlay() error {
	f, err := os.CreateTemp(d.dir, "sfvmm-disk-*.overlay")
	if err != nil {
		return fmt.Errorf("disk overlay: %w", err)
	}
	if err := f.Truncate(int64(d.size)); err != nil {
		f.Close()
		os.Remove(f.Name())
		return fmt.Errorf("disk overlay: %w", err)
	}
	d.layers = append(d.layers, &layer{r: f, f: f, path: f.Name(), local: localfs.Is(f), blocks: snapshot.NewBitmap(d.blocks()), own: true})
	return nil
}

// errClosed: the disk was used after Close.
var errClosed = errors.New("disk is closed")

// ReadVec reads into bufs, one after the other, from off on: a read of
// their concatenation, with one preadv(2) for each run of blocks that
// one layer serves (a guest's request is a list of pages). A disk that
// has not forked has one layer, and needs no look at the others.
func (d *Disk) ReadVec(bufs [][]byte, off int64) (int, error) {
	n := total(bufs)
	if err := d.check(n, off); err != nil {
		return 0, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return 0, errClosed
	}
	if n == 0 {
		return 0, nil
	}
	if len(d.layers) == 1 {
		if err := d.layers[0].readVec(bufs, off, d.keepP.Load()); err != nil {
			return 0, fmt.Errorf("disk %s: read at %d: %w", d.layers[0].path, off, err)
		}
		return n, nil
	}
	done := 0
	for done < n {
		pos := uint64(off) + uint64(done)
		l := d.holder(pos / BlockSize)
		end := (pos/BlockSize + 1) * BlockSize
		for end < uint64(off)+uint64(n) && d.holder(end/BlockSize) == l {
			end += BlockSize
		}
		k := int(min(end, uint64(off)+uint64(n)) - pos)
		if err := l.readVec(slice(bufs, done, k), int64(pos), d.keepP.Load()); err != nil {
			return done, fmt.Errorf("disk %s: read at %d: %w", l.path, pos, err)
		}
		done += k
	}
	return done, nil
}

// readVec fills bufs from off: with preadv(2) where the layer is a file.
func (l *layer) readVec(bufs [][]byte, off int64, keepP bool) error {
	if l.f == nil {
		for _, b := range bufs {
			if _, err := l.r.ReadAt(b, off); err != nil {
				return err
			}
			off += int64(len(b))
		}
		return nil
	}
	return vecFull(l.op(unix.SYS_PREADV, keepP), int(l.f.Fd()), bufs, off)
}

// slice is the bytes [from, from+n) of the concatenation of bufs, as
// slices of them.
func slice(bufs [][]byte, from, n int) [][]byte {
	var out [][]byte
	for _, b := range bufs {
		if n == 0 {
			break
		}
		if from >= len(b) {
			from -= len(b)
			continue
		}
		b = b[from:]
		from = 0
		k := min(len(b), n)
		out = append(out, b[:k])
		n -= k
	}
	return out
}

func total(bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n
}

// holder is the top layer that holds block b; d.mu held.
func (d *Disk) holder(b uint64) *layer {
	for i := len(d.layers) - 1; i > 0; i-- {
		if d.layers[i].blocks.Get(b) {
			return d.layers[i]
		}
	}
	return d.layers[0]
}

// check refuses an access outside the disk.
func (d *Disk) check(n int, off int64) error {
	if off < 0 || uint64(off) > d.size || uint64(n) > d.size-uint64(off) {
		return fmt.Errorf("disk: %d bytes at %d outside its %d", n, off, d.size)
	}
	return nil
}

// ErrReadOnly: a write to a read-only disk.
var ErrReadOnly = errors.New("disk is read-only")

// WriteVec writes bufs, one after the other, from off on: a write of
// their concatenation, in one pwritev(2).
func (d *Disk) WriteVec(bufs [][]byte, off int64) (int, error) {
	if d.readOnly {
		return 0, ErrReadOnly
	}
	n := total(bufs)
	if err := d.check(n, off); err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, errClosed
	}
	top := d.layers[len(d.layers)-1]
	if err := d.prepare(top, uint64(off), uint64(off)+uint64(n)); err != nil {
		return 0, err
	}
	top.dirty = true
	if err := vecFull(top.op(unix.SYS_PWRITEV, d.keepP.Load()), int(top.f.Fd()), bufs, off); err != nil {
		return 0, fmt.Errorf("disk %s: write at %d: %w", top.path, off, err)
	}
	d.written(top, uint64(off), uint64(off)+uint64(n))
	return n, nil
}

// prepare readies top for a write of [start, end): an overlay's blocks
// that the write covers only in part are copied up first; d.mu held.
func (d *Disk) prepare(top *layer, start, end uint64) error {
	if top.blocks == nil || end == start {
		return nil
	}
	for _, b := range []uint64{start / BlockSize, (end - 1) / BlockSize} {
		if !top.blocks.Get(b) && (b*BlockSize < start || min((b+1)*BlockSize, d.size) > end) {
			if err := d.copyUp(top, b); err != nil {
				return err
			}
		}
	}
	return nil
}

// written marks [start, end) as the top overlay's; d.mu held.
func (d *Disk) written(top *layer, start, end uint64) {
	if top.blocks != nil && end > start {
		top.blocks.SetRange(start/BlockSize, (end-1)/BlockSize-start/BlockSize+1)
	}
}

// copyUp copies block b from the layers below into top; d.mu held.
func (d *Disk) copyUp(top *layer, b uint64) error {
	buf := make([]byte, min(BlockSize, d.size-b*BlockSize))
	l := d.holder(b)
	if _, err := l.r.ReadAt(buf, int64(b*BlockSize)); err != nil {
		return fmt.Errorf("disk %s: read block %d: %w", l.path, b, err)
	}
	top.dirty = true
	if _, err := top.f.WriteAt(buf, int64(b*BlockSize)); err != nil {
		return fmt.Errorf("disk %s: write block %d: %w", top.path, b, err)
	}
	top.blocks.Set(b)
	return nil
}

// Flush makes what was written durable in the layers' files. An
// overlay's bitmap lives in memory: a crashed VMM's overlay is lost, as a
// guest's page cache is.
func (d *Disk) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errClosed
	}
	if d.readOnly {
		return nil
	}
	// Every layer written since the last flush, not only the top: a
	// fork since may have frozen a layer whose writes were not synced.
	for _, l := range d.layers {
		if l.dirty {
			if err := l.f.Sync(); err != nil {
				return fmt.Errorf("disk %s: sync: %w", l.path, err)
			}
		}
	}
	for _, l := range d.layers {
		l.dirty = false
	}
	return nil
}

// Discard lets go of [off, off+n): the whole blocks in it read as zero
// afterwards, and their space is handed back to the host's filesystem
// where it can take it. Parts of blocks are left as they are (a discard
// is a hint; the guest asked for whole sectors).
func (d *Disk) Discard(off, n int64) error {
	if d.readOnly {
		return ErrReadOnly
	}
	if n < 0 || n > int64(d.size) {
		return fmt.Errorf("disk: discard of %d bytes", n)
	}
	if err := d.check(int(n), off); err != nil {
		return err
	}
	first := (uint64(off) + BlockSize - 1) / BlockSize
	last := min(uint64(off+n), d.size) / BlockSize // blocks [first, last) are whole
	if uint64(off+n) == d.size {
		last = d.blocks()
	}
	if last <= first {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errClosed
	}
	top := d.layers[len(d.layers)-1]
	start, end := int64(first*BlockSize), min(int64(last*BlockSize), int64(d.size))
	top.dirty = true
	if err := punch(top.f, start, end-start); err != nil {
		return fmt.Errorf("disk %s: discard: %w", top.path, err)
	}
	if top.blocks != nil {
		top.blocks.SetRange(first, last-first)
	}
	return nil
}

// punch makes [off, off+n) of f read as zero: a hole where the
// filesystem makes them, zeroes written otherwise.
func punch(f *os.File, off, n int64) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := f.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// Freeze fixes the disk as it is now and returns it for clones to open;
// the disk then takes writes in a new overlay. The frozen layers are never
// written again while d is open. An overlay with nothing in it yet is not
// frozen: the disk goes on writing there, and the frozen disk is the
// layers below it.
func (d *Disk) Freeze() (State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return State{}, errClosed
	}
	frozen := d.layers
	if d.readOnly {
		return d.state(frozen)
	}
	if top := d.layers[len(d.layers)-1]; top.blocks != nil && top.blocks.Count() == 0 {
		frozen = d.layers[:len(d.layers)-1]
	} else if err := d.pushOverlay(); err != nil {
		return State{}, err
	}
	return d.state(frozen)
}

// Compact folds the frozen overlays, those between the base and the top,
// into one layer: into the base when it is the user's writable image
// (which takes them at Close anyway), into the lowest of them otherwise.
// Without it every fork after a write would add a layer for good. The
// caller ensures that nothing still reads an earlier freeze: the fork
// core calls it once the last image's clones have ended, before it maps
// the layers for the next.
func (d *Disk) Compact() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errClosed
	}
	first := 2 // keep the base and the lowest overlay
	if d.commit {
		first = 1
	}
	last := len(d.layers) - 1 // the top is not frozen
	if last <= first {
		return nil
	}
	into := d.layers[first-1]
	if !into.own && !d.commit {
		return nil // a layer this disk may not write (another's frozen one)
	}
	for _, l := range d.layers[first:last] {
		var err error
		l.blocks.Runs(func(b, n uint64) {
			if err == nil {
				off := int64(b * BlockSize)
				err = l.copyTo(into.f, off, min(int64(n*BlockSize), int64(d.size)-off))
			}
		})
		if err != nil {
			return fmt.Errorf("disk %s: fold %s into it: %w", into.path, l.path, err)
		}
		if into.blocks != nil {
			l.blocks.Runs(func(b, n uint64) { into.blocks.SetRange(b, n) })
		}
		into.dirty = true
	}
	for _, l := range d.layers[first:last] {
		l.f.Close()
		if l.own {
			os.Remove(l.path)
		}
	}
	d.layers = append(d.layers[:first], d.layers[last])
	return nil
}

// state describes layers; d.mu held.
func (d *Disk) state(layers []*layer) (State, error) {
	st := State{Size: d.size, ReadOnly: d.readOnly}
	for _, l := range layers {
		sl := Layer{Path: l.path}
		if l.blocks != nil {
			b, err := l.blocks.MarshalBinary()
			if err != nil {
				return State{}, err
			}
			sl.Blocks = b
		}
		st.Layers = append(st.Layers, sl)
	}
	return st, nil
}

// Map maps every layer the disk has now read-only into memory, the base
// first, for the fork's page service to serve to clones on other hosts;
// the top one may still change until the disk is frozen. Unmap each
// with unix.Munmap. A layer's mapping is its size rounded up to whole
// pages, the tail zero.
func (d *Disk) Map() ([][]byte, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return nil, errClosed
	}
	var maps [][]byte
	for _, l := range d.layers {
		if l.f == nil {
			return nil, errors.New("disk: a layer of another host's cannot be mapped")
		}
		m, err := unix.Mmap(int(l.f.Fd()), 0, int(PageAligned(d.size)), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			for _, m := range maps {
				unix.Munmap(m)
			}
			return nil, fmt.Errorf("disk %s: map: %w", l.path, err)
		}
		maps = append(maps, m)
	}
	return maps, nil
}

// PageAligned is n rounded up to whole pages.
func PageAligned(n uint64) uint64 { return (n + BlockSize - 1) &^ (BlockSize - 1) }

// CopyTo writes the disk as the guest sees it now to a new sparse image
// at path (a snapshot's copy): the base's data extents, then each
// overlay's blocks, in the kernel where it can.
func (d *Disk) CopyTo(path string) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return errClosed
	}
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("copy disk: %w", err)
	}
	err = d.copyLayers(out)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("copy disk to %s: %w", path, err)
	}
	return nil
}

// copyLayers writes every layer's data into out, bottom first; d.mu held.
func (d *Disk) copyLayers(out *os.File) error {
	if err := out.Truncate(int64(d.size)); err != nil {
		return err
	}
	if base := d.layers[0]; base.f != nil {
		if err := copyExtents(out, base.f, int64(d.size)); err != nil {
			return err
		}
	} else if err := base.copyTo(out, 0, int64(d.size)); err != nil {
		return err
	}
	return d.copyOverlays(out)
}

// copyOverlays copies every overlay's blocks into dst, bottom overlay
// first, so that the top one's win; d.mu held.
func (d *Disk) copyOverlays(dst *os.File) error {
	for _, l := range d.layers[1:] {
		var err error
		l.blocks.Runs(func(b, n uint64) {
			if err == nil {
				off := int64(b * BlockSize)
				err = l.copyTo(dst, off, min(int64(n*BlockSize), int64(d.size)-off))
			}
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// copyExtents copies the data extents of src (SEEK_DATA, SEEK_HOLE) into
// dst at the same offsets: holes stay holes.
func copyExtents(dst, src *os.File, size int64) error {
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // no data past off
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		hole = min(hole, size)
		if err := copyRange(dst, src, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyTo copies [off, off+n) of the layer to the same place in dst.
func (l *layer) copyTo(dst *os.File, off, n int64) error {
	if l.f != nil {
		return copyRange(dst, l.f, off, n)
	}
	_, err := io.Copy(io.NewOffsetWriter(dst, off), io.NewSectionReader(l.r, off, n))
	return err
}

// copyRange copies [off, off+n) of src to the same place in dst.
func copyRange(dst, src *os.File, off, n int64) error {
	for n > 0 {
		in, out := off, off
		k, err := unix.CopyFileRange(int(src.Fd()), &in, int(dst.Fd()), &out, int(min(n, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				_, err = io.Copy(io.NewOffsetWriter(dst, off), io.NewSectionReader(src, off, n))
				return err
			}
			return err
		}
		if k == 0 {
			return io.ErrUnexpectedEOF
		}
		off, n = off+int64(k), n-int64(k)
	}
	return nil
}

// Unlink removes the disk's own overlay files now; the disk goes on
// using them through its open files. For a machine that never forks (a
// clone), whose overlays no one else opens: they cannot outlive it, even
// if it is killed.
func (d *Disk) Unlink() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, l := range d.layers {
		if l.own {
			errs = append(errs, os.Remove(l.path))
			l.own = false
		}
	}
	return errors.Join(errs...)
}

// Close closes the disk. A disk whose base is the user's writable image
// first writes its overlays back into it, then removes them; if that
// fails, the overlays stay where they are and the error names them, so
// that no write is lost. A clone's or restored snapshot's overlay is
// removed.
func (d *Disk) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var err error
	if d.commit && len(d.layers) > 1 {
		err = d.commitOverlays()
	}
	if err != nil {
		// Each kept overlay with its block map beside it: a hole in a
		// sparse overlay could be a block it lacks or one discarded.
		var kept []string
		for _, l := range d.layers[1:] {
			l.own = false
			kept = append(kept, l.path)
			if b, merr := l.blocks.MarshalBinary(); merr == nil {
				os.WriteFile(l.path+".blocks", b, 0o600)
			}
		}
		err = fmt.Errorf("disk %s: writing back the overlays %v (block maps beside them, .blocks: snapshot.Bitmap), which are kept: %w", d.layers[0].path, kept, err)
	}
	return errors.Join(err, d.closeFiles())
}

// commitOverlays writes every overlay's blocks into the base and syncs
// it.
func (d *Disk) commitOverlays() error {
	if err := d.copyOverlays(d.layers[0].f); err != nil {
		return err
	}
	return d.layers[0].f.Sync()
}

// closeFiles closes every layer and removes the disk's own overlays.
func (d *Disk) closeFiles() error {
	var errs []error
	for _, l := range d.layers {
		if c, ok := l.r.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
		if l.own {
			errs = append(errs, os.Remove(l.path))
		}
	}
	d.layers = nil
	return errors.Join(errs...)
}
