package pages

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/sfvmm/sfvmm/memtap/uffd"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"golang.org/x/sys/unix"
)

const page = uffd.PageSize

func mapPages(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func TestCheck(t *testing.T) {
	ram := mapPages(t, 4)
	base := uint64(uintptr(unsafe.Pointer(&ram[0])))
	tests := []struct {
		name string
		host []byte
		want Region
		err  string // in the error; "" for none
	}{
		{"whole pages", ram, Region{Base: base, Pages: 4}, ""},
		{"from the second page", ram[page:], Region{Base: base + page, Pages: 3}, ""},
		{"empty", ram[:0], Region{}, "not whole pages"},
		{"part of a page", ram[:page+1], Region{}, "not whole pages"},
		{"unaligned", ram[1 : page+1], Region{}, "not whole pages"},
		{"too large", unsafe.Slice(&ram[0], (wire.MaxRegionPages+1)*page), Region{}, "too large"},
	}
	for _, tt := range tests {
		got, err := Check(tt.host)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%s: error %v, want one saying %q", tt.name, err, tt.err)
		case !slices.Equal(got.Runs, tt.want.Runs) || got.Base != tt.want.Base || got.Pages != tt.want.Pages:
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

func TestCheckCount(t *testing.T) {
	for n, ok := range map[int]bool{0: false, 1: true, wire.MaxRegions: true, wire.MaxRegions + 1: false} {
		if err := CheckCount(n); (err == nil) != ok {
			t.Errorf("%d regions: error %v, want ok=%t", n, err, ok)
		}
	}
}

// runs is a Set given as its runs.
type runs struct {
	n    uint64
	runs []Run
}

func (r runs) Len() uint64 { return r.n }

func (r runs) Runs(fn func(start, n uint64)) {
	for _, x := range r.runs {
		fn(x.Start, x.N)
	}
}

func TestRunsOf(t *testing.T) {
	set := runs{n: 100, runs: []Run{{0, 3}, {50, 50}}}
	if got, err := RunsOf(set, 100); err != nil || !slices.Equal(got, set.runs) {
		t.Errorf("runs %v, %v; want %v", got, err, set.runs)
	}
	if _, err := RunsOf(set, 101); err == nil {
		t.Error("a set of 100 pages taken for 101")
	}
}

// Resident finds the pages that were touched, and no others.
func TestResident(t *testing.T) {
	ram := mapPages(t, 200)
	want := []Run{{3, 1}, {64, 70}, {199, 1}}
	for _, r := range want {
		for p := r.Start; p < r.Start+r.N; p++ {
			ram[p*page] = 1
		}
	}
	got, err := Resident(ram)
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("resident runs %v, %v; want %v", got, err, want)
	}
	if got, err := Resident(nil); err != nil || got != nil {
		t.Errorf("no memory: %v, %v", got, err)
	}
}

func TestLocate(t *testing.T) {
	rs := []Region{{Base: 0x10000, Pages: 4}, {Base: 0x100000, Pages: 1}}
	tests := []struct {
		a      uint64
		region int
		page   uint64
		ok     bool
	}{
		{0x10000, 0, 0, true},
		{0x13fff, 0, 3, true},
		{0x14000, 0, 0, false},
		{0xffff, 0, 0, false},
		{0x100abc, 1, 0, true},
		{0x101000, 0, 0, false},
	}
	for _, tt := range tests {
		r, p, ok := Locate(rs, tt.a)
		if r != tt.region || p != tt.page || ok != tt.ok {
			t.Errorf("%#x: region %d page %d %t, want %d %d %t", tt.a, r, p, ok, tt.region, tt.page, tt.ok)
		}
	}
}

func TestZero(t *testing.T) {
	p := make([]byte, page)
	if !Zero(p) {
		t.Error("a zero page is not zero")
	}
	p[page-1] = 1
	if Zero(p) {
		t.Error("a page with its last byte set is zero")
	}
}

func TestBitmap(t *testing.T) {
	tests := []struct {
		name string
		n    uint64
		runs []Run
		set  []uint64 // pages that must be in the set; the others must not
		ok   bool
	}{
		{"empty", 10, nil, nil, true},
		{"all", 130, []Run{{0, 130}}, seq(0, 130), true},
		{"runs across words", 200, []Run{{1, 2}, {62, 70}}, append([]uint64{1, 2}, seq(62, 132)...), true},
		{"run past the end", 10, []Run{{8, 3}}, nil, false},
		{"run starting past the end", 10, []Run{{10, 1}}, nil, false},
	}
	for _, tt := range tests {
		b, err := NewBitmap(tt.n, tt.runs)
		if (err == nil) != tt.ok {
			t.Errorf("%s: error %v, want ok=%t", tt.name, err, tt.ok)
			continue
		}
		if err != nil {
			continue
		}
		want := map[uint64]bool{}
		for _, p := range tt.set {
			want[p] = true
		}
		for p := uint64(0); p < tt.n+70; p++ {
			if b.Get(p) != want[p] {
				t.Errorf("%s: page %d in set = %t, want %t", tt.name, p, b.Get(p), want[p])
			}
		}
	}
}

func seq(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

func TestRuns(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range []uint64{1, 63, 64, 65, 200, 1000} {
		for trial := 0; trial < 20; trial++ {
			var sets [3][]Run
			for k := range sets {
				for i := uint64(0); i < n; {
					l := uint64(r.IntN(80)) + 1
					if r.IntN(2) == 0 {
						sets[k] = append(sets[k], Run{i, min(l, n-i)})
					}
					i += l
				}
			}
			var bm [3]*Bitmap
			for k := range bm {
				var err error
				if bm[k], err = NewBitmap(n, sets[k]); err != nil {
					t.Fatal(err)
				}
			}
			want := []Run{}
			for i := uint64(0); i < n; i++ {
				if bm[0].Get(i) || (bm[1].Get(i) && !bm[2].Get(i)) {
					if l := len(want); l > 0 && want[l-1].Start+want[l-1].N == i {
						want[l-1].N++
					} else {
						want = append(want, Run{i, 1})
					}
				}
			}
			got := []Run{}
			Runs(bm[0], bm[1], bm[2], func(s, l uint64) { got = append(got, Run{s, l}) })
			if !slices.Equal(got, want) {
				t.Fatalf("%d pages: runs %v, want %v", n, got, want)
			}
		}
	}
}
