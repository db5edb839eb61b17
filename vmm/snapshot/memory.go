package snapshot

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
)

// Region is one RAM region of a running or restoring VM: its guest-physical
// address and the host mapping that backs it.
type Region struct {
	GPA  uint64
	Host []byte // len(Host) is the region's size, a multiple of PageSize
}

// fileLayout checks regions against their bitmaps and returns each region's
// offset in the memory file and the file's size.
func fileLayout(regions []Region, bm []*Bitmap) (offs []int64, size int64, err error) {
	if len(regions) != len(bm) {
		return nil, 0, fmt.Errorf("%d regions but %d page bitmaps", len(regions), len(bm))
	}
	for i, r := range regions {
		n := uint64(len(r.Host))
		if n%PageSize != 0 || bm[i] == nil || bm[i].Len() != n/PageSize {
			var pages uint64
			if bm[i] != nil {
				pages = bm[i].Len()
			}
			return nil, 0, fmt.Errorf("region %d of %d bytes does not match its bitmap of %d pages", i, n, pages)
		}
		offs = append(offs, size)
		size += int64(n)
	}
	return offs, size, nil
}

var zeroPage [PageSize]byte

// WriteMemory writes the marked pages of each region to a new file at path,
// each at its region's file offset (the sum of the sizes of the regions
// before it) plus its offset in the region, and syncs the file. Everything
// else is a hole, and so is a marked page that is all zeroes, since a hole
// reads back as zeroes. It returns the bytes it wrote.
func WriteMemory(path string, regions []Region, bm []*Bitmap) (written uint64, err error) {
	offs, size, err := fileLayout(regions, bm)
	if err != nil {
		return 0, fmt.Errorf("write memory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("write memory: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write memory: %w", cerr)
		}
	}()
	// The file's length is part of the format: LoadMemory checks it.
	if err := f.Truncate(size); err != nil {
		return 0, fmt.Errorf("write memory: %w", err)
	}
	for i, r := range regions {
		var werr error
		flush := func(from, to uint64) { // pages [from, to) of region i
			if werr == nil && to > from {
				_, werr = f.WriteAt(r.Host[from*PageSize:to*PageSize], offs[i]+int64(from*PageSize))
				written += (to - from) * PageSize
			}
		}
		bm[i].Runs(func(start, n uint64) {
			from := start
			for p := start; p < start+n; p++ {
				if bytes.Equal(r.Host[p*PageSize:(p+1)*PageSize], zeroPage[:]) {
					flush(from, p)
					from = p + 1
				}
			}
			flush(from, start+n)
		})
		if werr != nil {
			return 0, fmt.Errorf("write memory: region %d: %w", i, werr)
		}
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("write memory: %w", err)
	}
	return written, nil
}

// LoadMemory copies the marked pages of each region from the memory file at
// path into the region's host mapping, leaving unmarked pages as they are
// (zero, in freshly mapped RAM).
//
// It reads (pread) rather than mapping the file MAP_PRIVATE into place:
// guest RAM stays the VMM's own anonymous mapping, which memtap can register
// with userfaultfd and serve to clones, and the snapshot files can be
// deleted once the restore returns. A lazy restorer that wants the pages on
// demand reads the bitmaps and the file itself instead.
func LoadMemory(path string, regions []Region, bm []*Bitmap) error {
	offs, size, err := fileLayout(regions, bm)
	if err != nil {
		return fmt.Errorf("load memory: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load memory: %w", err)
	}
	defer f.Close()
	if err := checkMemoryFile(f, size); err != nil {
		return fmt.Errorf("load memory: %w", err)
	}
	for i, r := range regions {
		var rerr error
		bm[i].Runs(func(start, n uint64) {
			if rerr == nil {
				_, rerr = f.ReadAt(r.Host[start*PageSize:(start+n)*PageSize], offs[i]+int64(start*PageSize))
			}
		})
		if rerr != nil {
			return fmt.Errorf("load memory: region %d: %w", i, rerr)
		}
	}
	return nil
}

// checkMemoryFile refuses a memory file shorter than the layout needs.
func checkMemoryFile(f *os.File, need int64) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() < need {
		return fmt.Errorf("%w: memory file is %d bytes, descriptor needs %d", ErrCorrupt, st.Size(), need)
	}
	return nil
}

// OpenMemory opens the memory file of the snapshot in dir for mapping: it
// checks the file is as long as header h says and returns it with the file
// offset of each of h.Memory's regions. A restorer that maps the file
// copy-on-write (MAP_PRIVATE) starts the guest without reading its memory
// first; pages come from the page cache as the guest touches them.
func OpenMemory(dir string, h Header) (*os.File, []int64, error) {
	var offs []int64
	var size int64
	for _, r := range h.Memory {
		offs = append(offs, size)
		size += int64(r.Size)
	}
	f, err := os.Open(filepath.Join(dir, MemoryFile))
	if err != nil {
		return nil, nil, fmt.Errorf("open memory: %w", err)
	}
	if err := checkMemoryFile(f, size); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("open memory: %w", err)
	}
	return f, offs, nil
}
