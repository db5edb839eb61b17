package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// MaxPages bounds a bitmap: 1 TiB of 4 KiB pages, the most guest RAM sfvmm
// maps. It caps what a corrupt bitmap can make UnmarshalBinary allocate at
// 32 MiB.
const MaxPages = 1 << 28

// Bitmap says which pages of one RAM region hold data: bit i is page i.
// The zero value is an empty bitmap of no pages.
type Bitmap struct {
	pages uint64
	words []uint64
}

// NewBitmap returns a bitmap of pages clear bits. It panics if pages exceeds
// MaxPages, as make does for an impossible length.
func NewBitmap(pages uint64) *Bitmap {
	if pages > MaxPages {
		panic(fmt.Sprintf("snapshot: bitmap of %d pages exceeds MaxPages", pages))
	}
	return &Bitmap{pages: pages, words: make([]uint64, (pages+63)/64)}
}

// FromResidency returns the bitmap of the pages a mincore(2) vector marks
// resident (bit 0 of each byte). It packs eight bytes at a time: the
// populated set is built while the guest is paused for a fork, and a
// byte-by-byte loop there would grow with RAM.
func FromResidency(vec []byte) *Bitmap {
	b := NewBitmap(uint64(len(vec)))
	full := len(vec) &^ 7
	for i := 0; i < full; i += 8 {
		// Bit 0 of byte k of x lands in bit 56+k of the product and
		// no two terms meet, so nothing carries.
		x := binary.LittleEndian.Uint64(vec[i:]) & 0x0101010101010101
		if x != 0 {
			b.words[i/64] |= (x * 0x0102040810204080 >> 56) << (i % 64)
		}
	}
	for i := full; i < len(vec); i++ {
		if vec[i]&1 != 0 {
			b.Set(uint64(i))
		}
	}
	return b
}

// Len is the number of pages the bitmap covers.
func (b *Bitmap) Len() uint64 { return b.pages }

func (b *Bitmap) check(i uint64) {
	if i >= b.pages {
		panic(fmt.Sprintf("snapshot: page %d out of range [0, %d)", i, b.pages))
	}
}

// Set marks page i. It panics if i is out of range.
func (b *Bitmap) Set(i uint64) {
	b.check(i)
	b.words[i/64] |= 1 << (i % 64)
}

// Clear unmarks page i. It panics if i is out of range.
func (b *Bitmap) Clear(i uint64) {
	b.check(i)
	b.words[i/64] &^= 1 << (i % 64)
}

// Get reports whether page i is marked. It panics if i is out of range.
func (b *Bitmap) Get(i uint64) bool {
	b.check(i)
	return b.words[i/64]&(1<<(i%64)) != 0
}

// SetRange marks pages [start, start+n). It panics if the range is out of
// range.
func (b *Bitmap) SetRange(start, n uint64) {
	if n == 0 {
		return
	}
	if start >= b.pages || n > b.pages-start {
		panic(fmt.Sprintf("snapshot: pages [%d, +%d) out of range [0, %d)", start, n, b.pages))
	}
	for n > 0 {
		w, off := start/64, start%64
		k := min(64-off, n)
		b.words[w] |= (^uint64(0) >> (64 - k)) << off
		start, n = start+k, n-k
	}
}

// Count is the number of marked pages.
func (b *Bitmap) Count() uint64 {
	var n int
	for _, w := range b.words {
		n += bits.OnesCount64(w)
	}
	return uint64(n)
}

// Equal reports whether b and c cover the same pages and mark the same ones.
func (b *Bitmap) Equal(c *Bitmap) bool {
	if b.pages != c.pages {
		return false
	}
	for i, w := range b.words {
		if w != c.words[i] {
			return false
		}
	}
	return true
}

// next returns the first page at or after i whose bit is set (want true) or
// clear (want false), or b.pages if there is none.
func (b *Bitmap) next(i uint64, want bool) uint64 {
	for i < b.pages {
		w := b.words[i/64]
		if !want {
			w = ^w
		}
		w >>= i % 64
		if w != 0 {
			return min(i+uint64(bits.TrailingZeros64(w)), b.pages)
		}
		i = (i/64 + 1) * 64
	}
	return b.pages
}

// Runs calls fn for each maximal run of marked pages, in ascending order.
func (b *Bitmap) Runs(fn func(start, n uint64)) {
	for i := b.next(0, true); i < b.pages; i = b.next(i, true) {
		end := b.next(i, false)
		fn(i, end-i)
		i = end
	}
}

// The two encodings of a bitmap. Each starts with its tag byte and the page
// count as a uvarint.
const (
	// bitmapRuns is followed by the lengths of alternating clear and set
	// runs as uvarints, clear first: r0 >= 0, then each > 0, summing to the
	// page count. A bitmap of a few runs takes a few bytes whatever its size.
	bitmapRuns = 0
	// bitmapRaw is followed by the bits themselves, ceil(pages/8) bytes,
	// page i in bit i%8 of byte i/8, unused high bits zero. It bounds the
	// worst case (alternating pages) at the raw size plus a few bytes.
	bitmapRaw = 1
)

// MarshalBinary encodes the bitmap in whichever encoding is smaller
// (run lengths, on a tie). The result is canonical: UnmarshalBinary accepts
// no other encoding of the same bitmap.
func (b *Bitmap) MarshalBinary() ([]byte, error) {
	rawLen := (b.pages + 7) / 8
	out := binary.AppendUvarint([]byte{bitmapRuns}, b.pages)
	head := len(out)
	limit := uint64(head) + rawLen
	for i := uint64(0); i < b.pages && uint64(len(out)) <= limit; {
		set := b.next(i, true)
		out = binary.AppendUvarint(out, set-i)
		if set == b.pages {
			break
		}
		clear := b.next(set, false)
		out = binary.AppendUvarint(out, clear-set)
		i = clear
	}
	if uint64(len(out)) <= limit {
		return out, nil
	}
	out[0] = bitmapRaw
	out = out[:head]
	for i := uint64(0); i < rawLen; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], b.words[i/8])
		out = append(out, w[:min(8, rawLen-i)]...)
	}
	return out, nil
}

// UnmarshalBinary replaces b with the bitmap data encodes. It refuses
// truncated, trailing, oversized and non-canonical input.
func (b *Bitmap) UnmarshalBinary(data []byte) error {
	nb, err := unmarshalBitmap(data, anyPages)
	if err != nil {
		return fmt.Errorf("decode page bitmap: %w: %w", ErrCorrupt, err)
	}
	*b = *nb
	return nil
}

// anyPages tells unmarshalBitmap to accept any page count up to MaxPages.
const anyPages = ^uint64(0)

// unmarshalBitmap decodes data, which must cover want pages unless want is
// anyPages.
func unmarshalBitmap(data []byte, want uint64) (*Bitmap, error) {
	if len(data) == 0 {
		return nil, errors.New("empty")
	}
	d := decoder{b: data[1:]}
	pages, err := d.uvarint()
	if err != nil {
		return nil, fmt.Errorf("page count: %w", err)
	}
	if pages > MaxPages {
		return nil, fmt.Errorf("%d pages exceed the maximum of %d", pages, MaxPages)
	}
	if want != anyPages && pages != want {
		return nil, fmt.Errorf("covers %d pages, want %d", pages, want)
	}
	var nb *Bitmap
	switch data[0] {
	case bitmapRaw:
		p, err := d.take((pages + 7) / 8)
		if err != nil {
			return nil, fmt.Errorf("bits of %d pages: %w", pages, err)
		}
		if len(d.b) != 0 {
			return nil, fmt.Errorf("%d bytes of trailing garbage", len(d.b))
		}
		nb = NewBitmap(pages)
		for i := 0; i < len(p); i += 8 {
			var w [8]byte
			copy(w[:], p[i:])
			nb.words[i/8] = binary.LittleEndian.Uint64(w[:])
		}
		if r := pages % 64; r != 0 && nb.words[len(nb.words)-1]>>r != 0 {
			return nil, errors.New("bits set beyond the last page")
		}
	case bitmapRuns:
		nb = NewBitmap(pages)
		for i, k := uint64(0), 0; i < pages || (pages == 0 && len(d.b) > 0); k++ {
			n, err := d.uvarint()
			if err != nil {
				return nil, fmt.Errorf("run %d: %w", k, err)
			}
			if n > pages-i {
				return nil, fmt.Errorf("run %d of %d pages passes the end (%d pages)", k, n, pages)
			}
			if n == 0 && (k > 0 || i == pages) {
				return nil, fmt.Errorf("run %d is empty", k)
			}
			if k%2 == 1 {
				nb.SetRange(i, n)
			}
			i += n
		}
		if len(d.b) != 0 {
			return nil, fmt.Errorf("%d bytes of trailing garbage", len(d.b))
		}
	default:
		return nil, fmt.Errorf("unknown encoding %d", data[0])
	}
	// Each encoding is strict on its own; this refuses the one Marshal
	// would not have chosen, so that a bitmap has one encoding.
	if canon, _ := nb.MarshalBinary(); !bytes.Equal(canon, data) {
		return nil, errors.New("not the canonical encoding")
	}
	return nb, nil
}
