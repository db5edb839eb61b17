package snapshot

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

const gib = 1 << 30

func TestBitmapSizes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pages uint64
		fill  func(b *Bitmap)
		max   int // bytes the encoding may take
	}{
		{"no pages", 0, func(*Bitmap) {}, 2},
		{"1 GiB empty", gib / PageSize, func(*Bitmap) {}, 8},
		{"1 GiB full", gib / PageSize, func(b *Bitmap) { b.SetRange(0, b.Len()) }, 12},
		{"1 GiB, 100 MiB in 5 runs", gib / PageSize, func(b *Bitmap) {
			for i := range uint64(5) {
				b.SetRange(i*40000+17, 100<<20/PageSize/5)
			}
		}, 40},
		{"1 GiB, 100 MiB in 1000 runs", gib / PageSize, func(b *Bitmap) {
			for i := range uint64(1000) {
				b.SetRange(i*250+3, 100<<20/PageSize/1000)
			}
		}, 4 * 1000},
		{"1 GiB alternating", gib / PageSize, func(b *Bitmap) {
			for i := uint64(0); i < b.Len(); i += 2 {
				b.Set(i)
			}
		}, gib/PageSize/8 + 8},
		{"1 GiB random half", gib / PageSize, func(b *Bitmap) {
			r := rand.New(rand.NewPCG(1, 2))
			for i := range b.Len() {
				if r.IntN(2) == 0 {
					b.Set(i)
				}
			}
		}, gib/PageSize/8 + 8},
		{"odd length, last page set", 1001, func(b *Bitmap) { b.Set(1000) }, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBitmap(tc.pages)
			tc.fill(b)
			enc, err := b.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d pages, %d set: %d bytes (raw bitmap %d bytes)", tc.name, b.Len(), b.Count(), len(enc), (b.Len()+7)/8)
			if len(enc) > tc.max {
				t.Errorf("encoding of %d bytes exceeds %d", len(enc), tc.max)
			}
			var got Bitmap
			if err := got.UnmarshalBinary(enc); err != nil {
				t.Fatal(err)
			}
			if !got.Equal(b) {
				t.Fatal("round trip differs")
			}
		})
	}
}

// Runs, Count and Get agree with a plain []bool on random bitmaps.
func TestBitmapAgainstBools(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for iter := range 200 {
		n := uint64(r.IntN(300))
		b, ref := NewBitmap(n), make([]bool, n)
		for range r.IntN(20) {
			if n == 0 {
				break
			}
			start := uint64(r.IntN(int(n)))
			k := uint64(r.IntN(int(n-start) + 1))
			b.SetRange(start, k)
			for i := start; i < start+k; i++ {
				ref[i] = true
			}
			if r.IntN(3) == 0 {
				b.Clear(start)
				ref[start] = false
			}
		}
		var count uint64
		runs := make([]bool, n)
		last := uint64(0)
		b.Runs(func(start, k uint64) {
			if k == 0 || (start > 0 && start <= last && runs[start-1]) {
				t.Fatalf("iter %d: run [%d,+%d) is empty or not maximal", iter, start, k)
			}
			for i := start; i < start+k; i++ {
				runs[i] = true
			}
			last = start + k
		})
		for i := range n {
			if b.Get(i) != ref[i] || runs[i] != ref[i] {
				t.Fatalf("iter %d: page %d: Get %v, Runs %v, want %v", iter, i, b.Get(i), runs[i], ref[i])
			}
			if ref[i] {
				count++
			}
		}
		if b.Count() != count {
			t.Fatalf("iter %d: Count %d, want %d", iter, b.Count(), count)
		}
		enc, _ := b.MarshalBinary()
		var got Bitmap
		if err := got.UnmarshalBinary(enc); err != nil || !got.Equal(b) {
			t.Fatalf("iter %d: round trip: %v", iter, err)
		}
	}
}

func TestBitmapCorrupt(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"no page count", []byte{0}, "page count: truncated"},
		{"unknown encoding", []byte{7, 1, 1}, "unknown encoding 7"},
		{"too many pages", []byte{0, 0x80, 0x80, 0x80, 0x80, 0x10}, "exceed the maximum"},
		{"runs short of the end", []byte{0, 10, 3, 4}, "run 2: truncated"},
		{"run past the end", []byte{0, 10, 3, 8}, "run 1 of 8 pages passes the end"},
		{"empty run", []byte{0, 10, 3, 0, 7}, "run 1 is empty"},
		{"leading empty run alone", []byte{0, 0, 0}, "run 0 is empty"},
		{"trailing runs", []byte{0, 2, 2, 0}, "trailing garbage"},
		{"raw truncated", []byte{1, 16, 0xff}, "bits of 16 pages: truncated"},
		{"raw trailing", []byte{1, 8, 0x55, 0}, "trailing garbage"},
		{"raw bits past the end", []byte{1, 12, 0x55, 0xf5}, "bits set beyond the last page"},
		{"raw where runs are smaller", []byte{1, 16, 0xff, 0xff}, "not the canonical encoding"},
		{"runs where raw is smaller", []byte{0, 8, 0, 1, 1, 1, 1, 1, 1, 1, 1}, "not the canonical encoding"},
		{"non-minimal varint", []byte{0, 0x8a, 0x00, 10}, "not minimal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b Bitmap
			err := b.UnmarshalBinary(tc.in)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("UnmarshalBinary(%x): %v, want ErrCorrupt containing %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestBitmapBounds(t *testing.T) {
	b := NewBitmap(10)
	for _, f := range []func(){
		func() { b.Set(10) },
		func() { b.Get(10) },
		func() { b.SetRange(5, 6) },
		func() { NewBitmap(MaxPages + 1) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("out-of-range use did not panic")
				}
			}()
			f()
		}()
	}
}

func TestFromResidency(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	for _, n := range []int{0, 1, 7, 8, 63, 64, 65, 1000, 4099} {
		vec := make([]byte, n)
		for i := range vec {
			switch r.IntN(4) {
			case 0:
				vec[i] = 1
			case 1:
				vec[i] = 3 // reserved bits set: only bit 0 counts
			case 2:
				vec[i] = 2
			}
		}
		got := FromResidency(vec)
		want := NewBitmap(uint64(n))
		for i, v := range vec {
			if v&1 != 0 {
				want.Set(uint64(i))
			}
		}
		if !got.Equal(want) {
			t.Errorf("%d pages: bitmaps differ", n)
		}
	}
}
