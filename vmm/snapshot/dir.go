package snapshot

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The files of a snapshot directory.
const (
	DescriptorFile = "descriptor"
	MemoryFile     = "memory"
)

// tmpMarker is in the name of a snapshot directory still being written. Open
// refuses such a directory even if both its files are there, so that what a
// crash leaves behind is never taken for a snapshot.
const tmpMarker = ".tmp-"

// maxDescriptorFile bounds the descriptor file Open reads into memory.
const maxDescriptorFile = int64(maxPayload + prefixLen + sumLen)

// WriteOptions tunes Write.
type WriteOptions struct {
	// Overwrite replaces an existing non-empty directory; without it Write
	// refuses one.
	Overwrite bool
	// Files, if set, writes the snapshot's other files (its disks) into
	// the temporary directory, which Write then syncs and renames with
	// the rest.
	Files func(tmp string) error

	// afterDescriptor, if set, runs once the descriptor file is written
	// and synced in the temporary directory; an error from it aborts the
	// write as a failure at that point would. Tests use it.
	afterDescriptor func(tmp string) error
}

// Info describes a written snapshot.
type Info struct {
	DescriptorBytes int    // size of the descriptor file
	MemoryFileBytes int64  // apparent size of the memory file (guest RAM)
	Pages           uint64 // pages the bitmaps mark
	MemoryBytes     uint64 // bytes written to the memory file: marked pages that are not all zero
}

// Write saves a snapshot to dir atomically. It writes both files into a new
// directory dir.tmp-* next to dir, syncs them and that directory, renames it
// to dir and syncs the parent. A crash part-way leaves a *.tmp-* directory,
// which Open refuses, and never a partial dir. An existing dir is replaced
// only if it is empty or opt.Overwrite is set; the replacement is one
// atomic exchange where the filesystem supports it.
//
// h.Memory is filled in from regions and bm; h.MemBytes, if zero, too.
func Write(dir string, h Header, state any, regions []Region, bm []*Bitmap, opt WriteOptions) (Info, error) {
	dir = filepath.Clean(dir)
	parent, base := filepath.Split(dir)
	if strings.Contains(base, tmpMarker) {
		return Info{}, fmt.Errorf("write snapshot: name %q contains %q, which marks unfinished snapshots", base, tmpMarker)
	}
	_, size, err := fileLayout(regions, bm)
	if err != nil {
		return Info{}, fmt.Errorf("write snapshot: %w", err)
	}
	h.Memory = nil
	for i, r := range regions {
		h.Memory = append(h.Memory, MemoryRegion{GPA: r.GPA, Size: uint64(len(r.Host)), Pages: bm[i]})
	}
	if h.MemBytes == 0 {
		h.MemBytes = uint64(size)
	}
	desc, err := Encode(h, state)
	if err != nil {
		return Info{}, fmt.Errorf("write snapshot: %w", err)
	}
	exists, err := nonEmptyDir(dir)
	if err != nil {
		return Info{}, fmt.Errorf("write snapshot: %w", err)
	}
	if exists && !opt.Overwrite {
		return Info{}, fmt.Errorf("write snapshot: %s exists and is not empty", dir)
	}

	tmp, err := os.MkdirTemp(parent, base+tmpMarker+"*")
	if err != nil {
		return Info{}, fmt.Errorf("write snapshot: %w", err)
	}
	defer os.RemoveAll(tmp) // after the rename, gone or the old snapshot

	info := Info{DescriptorBytes: len(desc), MemoryFileBytes: size}
	if err := writeFile(filepath.Join(tmp, DescriptorFile), desc); err != nil {
		return Info{}, fmt.Errorf("write snapshot: descriptor: %w", err)
	}
	if opt.afterDescriptor != nil {
		if err := opt.afterDescriptor(tmp); err != nil {
			return Info{}, fmt.Errorf("write snapshot: %w", err)
		}
	}
	if info.MemoryBytes, err = WriteMemory(filepath.Join(tmp, MemoryFile), regions, bm); err != nil {
		return Info{}, fmt.Errorf("write snapshot: %w", err)
	}
	for _, b := range bm {
		info.Pages += b.Count()
	}
	if opt.Files != nil {
		if err := opt.Files(tmp); err != nil {
			return Info{}, fmt.Errorf("write snapshot: %w", err)
		}
	}
	if err := syncDir(tmp); err != nil {
		return Info{}, fmt.Errorf("write snapshot: %w", err)
	}
	if err := commit(tmp, dir, exists); err != nil {
		return Info{}, fmt.Errorf("write snapshot: %w", err)
	}
	if err := syncDir(filepath.Join(parent, ".")); err != nil {
		return Info{}, fmt.Errorf("write snapshot: %w", err)
	}
	return info, nil
}

// commit moves the finished tmp to dir. An existing non-empty dir is
// exchanged with tmp in one step (RENAME_EXCHANGE), so that dir always holds
// a whole snapshot, old or new; where the filesystem cannot exchange, the
// old one is renamed away first, leaving a moment with no dir.
func commit(tmp, dir string, exists bool) error {
	if !exists {
		// rename(2) replaces an empty directory and fails on a non-empty
		// one, so a dir that appeared since the check is not clobbered.
		// (os.Rename refuses any existing directory.)
		return rename(tmp, dir)
	}
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dir, unix.RENAME_EXCHANGE)
	if err == nil || !(errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP)) {
		if err != nil {
			return fmt.Errorf("exchange %s with %s: %w", tmp, dir, err)
		}
		return nil
	}
	return replace(tmp, dir)
}

// replace puts tmp in the place of dir in two renames, parking the old dir
// under a name Open refuses and then removing it.
func replace(tmp, dir string) error {
	parent, base := filepath.Split(dir)
	old, err := os.MkdirTemp(parent, base+tmpMarker+"old-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(old)
	if err := rename(dir, old); err != nil {
		return err
	}
	if err := rename(tmp, dir); err != nil {
		return errors.Join(err, rename(old, dir))
	}
	return nil
}

func rename(from, to string) error {
	if err := unix.Rename(from, to); err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

func nonEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if len(names) > 0 {
		return true, nil
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read %s: %w", dir, err)
	}
	return false, nil
}

func writeFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// Open checks that dir is a whole snapshot: both files are there, the
// descriptor is intact and of this version, and the memory file is as long
// as the descriptor says. It returns the header without decoding the state.
// A descriptor of another version is refused with ErrVersion, whatever
// follows its version and whatever its size.
func Open(dir string) (Header, error) {
	h, err := readDir(dir, nil)
	if err != nil {
		return Header{}, fmt.Errorf("open snapshot: %w", err)
	}
	return h, nil
}

// Read checks dir as Open does and decodes the state into state. The
// restorer then builds guest RAM to the layout in h.Memory and calls Load.
func Read(dir string, state any) (Header, error) {
	h, err := readDir(dir, state)
	if err != nil {
		return Header{}, fmt.Errorf("read snapshot: %w", err)
	}
	return h, nil
}

func readDir(dir string, state any) (Header, error) {
	dir = filepath.Clean(dir)
	if strings.Contains(filepath.Base(dir), tmpMarker) {
		return Header{}, fmt.Errorf("%w: %s is an unfinished snapshot (its name contains %q)", ErrCorrupt, dir, tmpMarker)
	}
	f, err := os.Open(filepath.Join(dir, DescriptorFile))
	if err != nil {
		return Header{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Header{}, err
	}
	if st.Size() > maxDescriptorFile {
		// Too large for this version, but perhaps not for the one that
		// wrote it: that is the error to report, if so.
		head := make([]byte, versionEnd)
		if _, err := f.ReadAt(head, 0); err != nil {
			return Header{}, fmt.Errorf("read descriptor: %w", err)
		}
		if err := checkVersion(head); err != nil {
			return Header{}, fmt.Errorf("decode descriptor: %w", err)
		}
		return Header{}, fmt.Errorf("%w: descriptor file of %d bytes exceeds %d", ErrCorrupt, st.Size(), maxDescriptorFile)
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil {
		return Header{}, fmt.Errorf("read descriptor: %w", err)
	}
	var h Header
	if state == nil {
		h, err = DecodeHeader(b)
	} else {
		h, err = Decode(b, state)
	}
	if err != nil {
		return Header{}, err
	}
	m, err := os.Open(filepath.Join(dir, MemoryFile))
	if err != nil {
		return Header{}, err
	}
	defer m.Close()
	if err := checkMemoryFile(m, int64(h.MemBytes)); err != nil {
		return Header{}, err
	}
	return h, nil
}

// Load copies the populated pages of the snapshot in dir, whose header h
// Read or Open returned, into regions, which must match h.Memory: the same
// GPAs and sizes, in order.
func Load(dir string, h Header, regions []Region) error {
	if len(regions) != len(h.Memory) {
		return fmt.Errorf("load snapshot: %d regions, snapshot has %d", len(regions), len(h.Memory))
	}
	for i, r := range regions {
		if m := h.Memory[i]; r.GPA != m.GPA || uint64(len(r.Host)) != m.Size {
			return fmt.Errorf("load snapshot: region %d is [%#x, +%#x), snapshot has [%#x, +%#x)", i, r.GPA, len(r.Host), m.GPA, m.Size)
		}
	}
	if err := LoadMemory(filepath.Join(dir, MemoryFile), regions, h.Bitmaps()); err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	return nil
}
