// Package pages is how memtap's two sides, the child's client and the
// parent's memory server, describe guest RAM to their helper processes: a
// region's place and size, checked against the wire format's limits, and
// its populated pages as runs (from the caller's set, or from mincore(2));
// and, in the helpers, the bitmaps built from those runs.
//
// It is internal to memtap and memtap/server. It neither maps RAM nor
// talks to a helper (package helper does that).
package pages

import (
	"bytes"
	"fmt"
	"math/bits"
	"unsafe"

	"github.com/sfvmm/sfvmm/memtap/uffd"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"golang.org/x/sys/unix"
)

// Set is a set of pages of one RAM region, as runs (the VMM's
// snapshot.Bitmap is one). memtap.PageSet and server.PageSet are this.
type Set interface {
	Len() uint64
	Runs(fn func(start, n uint64))
}

// Run is a run of pages [Start, Start+N).
type Run struct{ Start, N uint64 }

// Region is a RAM region as a helper is told of it.
type Region struct {
	Base  uint64 // address of its first page, in the process whose RAM it is
	Pages uint64
	Runs  []Run // the populated pages
	// Frozen (server): the region does not change once the image is
	// sealed (a frozen disk layer's file, mapped read-only), so it is
	// served as it is, without write protection.
	Frozen bool
	// Exact (client): each page is fetched as it is touched, never a
	// window ahead (a disk layer, which the guest reads exactly as far
	// as it wants).
	Exact bool
}

// CheckCount checks a number of RAM regions against wire.MaxRegions.
func CheckCount(n int) error {
	if n == 0 || n > wire.MaxRegions {
		return fmt.Errorf("%d regions, want 1 to %d", n, wire.MaxRegions)
	}
	return nil
}

// Check checks host, the mapping of a RAM region: page aligned, a whole
// number of pages, at most wire.MaxRegionPages. It returns the region
// with no pages populated.
func Check(host []byte) (Region, error) {
	if len(host) == 0 || len(host)%uffd.PageSize != 0 || uintptr(unsafe.Pointer(&host[0]))%uffd.PageSize != 0 {
		return Region{}, fmt.Errorf("%d bytes at %p are not whole pages", len(host), unsafe.SliceData(host))
	}
	r := Region{Base: uint64(uintptr(unsafe.Pointer(&host[0]))), Pages: uint64(len(host) / uffd.PageSize)}
	if r.Pages > wire.MaxRegionPages {
		return Region{}, fmt.Errorf("%d pages is too large (at most %d)", r.Pages, wire.MaxRegionPages)
	}
	return r, nil
}

// RunsOf returns the runs of s, which must cover n pages.
func RunsOf(s Set, n uint64) ([]Run, error) {
	if s.Len() != n {
		return nil, fmt.Errorf("populated set of %d pages for %d", s.Len(), n)
	}
	var runs []Run
	s.Runs(func(start, n uint64) { runs = append(runs, Run{Start: start, N: n}) })
	return runs, nil
}

// Resident returns the runs of pages of b, which starts on a page, present
// in memory, as mincore(2) reports them. A page swapped out is not
// resident.
func Resident(b []byte) ([]Run, error) {
	if len(b) == 0 {
		return nil, nil
	}
	vec := make([]byte, (len(b)+uffd.PageSize-1)/uffd.PageSize)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		return nil, fmt.Errorf("mincore: %w", errno)
	}
	var runs []Run
	for i := 0; i < len(vec); {
		if vec[i]&1 == 0 {
			i++
			continue
		}
		j := i
		for j < len(vec) && vec[j]&1 != 0 {
			j++
		}
		runs = append(runs, Run{Start: uint64(i), N: uint64(j - i)})
		i = j
	}
	return runs, nil
}

// Locate returns the index of the region of rs that holds address a, and
// a's page in it.
func Locate(rs []Region, a uint64) (int, uint64, bool) {
	for i, r := range rs {
		if a >= r.Base && (a-r.Base)/uffd.PageSize < r.Pages {
			return i, (a - r.Base) / uffd.PageSize, true
		}
	}
	return 0, 0, false
}

var zeroPage [uffd.PageSize]byte

// Zero reports whether page, one page of data, is all zero.
func Zero(page []byte) bool { return bytes.Equal(page, zeroPage[:]) }

// Bitmap is a set of pages, built from runs.
type Bitmap struct {
	n     uint64
	words []uint64
}

// NewBitmap returns the set of n pages holding runs. It refuses runs
// outside [0, n).
func NewBitmap(n uint64, runs []Run) (*Bitmap, error) {
	b := &Bitmap{n: n, words: make([]uint64, (n+63)/64)}
	for _, r := range runs {
		if r.Start >= n || r.N > n-r.Start {
			return nil, fmt.Errorf("pages [%d, +%d) outside [0, %d)", r.Start, r.N, n)
		}
		for i := r.Start; i < r.Start+r.N; {
			if i%64 == 0 && r.Start+r.N-i >= 64 {
				b.words[i/64] = ^uint64(0)
				i += 64
				continue
			}
			b.words[i/64] |= 1 << (i % 64)
			i++
		}
	}
	return b, nil
}

// Get reports whether page i is in the set; pages past the end are not.
func (b *Bitmap) Get(i uint64) bool {
	return i < b.n && b.words[i/64]&(1<<(i%64)) != 0
}

// Len is the number of pages covered.
func (b *Bitmap) Len() uint64 { return b.n }

// Set adds page i (which must be below Len) to the set.
func (b *Bitmap) Set(i uint64) { b.words[i/64] |= 1 << (i % 64) }

// Runs calls fn for each run of pages in a ∪ (b ∖ c), in order; the
// three cover the same pages.
func Runs(a, b, c *Bitmap, fn func(start, n uint64)) {
	var start, n uint64
	flush := func() {
		if n > 0 {
			fn(start, n)
			n = 0
		}
	}
	for w := range a.words {
		word := a.words[w] | b.words[w]&^c.words[w]
		base := uint64(w) * 64
		switch word {
		case 0:
			flush()
			continue
		case ^uint64(0):
			if n > 0 && start+n == base {
				n += 64
			} else {
				flush()
				start, n = base, 64
			}
			continue
		}
		for word != 0 {
			i := base + uint64(bits.TrailingZeros64(word))
			if n > 0 && start+n == i {
				n++
			} else {
				flush()
				start, n = i, 1
			}
			word &= word - 1
		}
		if start+n != base+64 {
			flush() // the run stops inside this word
		}
	}
	flush()
}
