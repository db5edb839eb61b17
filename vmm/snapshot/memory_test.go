package snapshot

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// testRAM is guest RAM with some populated pages and the bitmaps that mark
// them: random data, plus marked pages that are all zeroes.
type testRAM struct {
	regions []Region
	bm      []*Bitmap
	written uint64 // bytes of marked, non-zero pages
}

func newTestRAM(t testing.TB, seed uint64, sizes []int, gpas []uint64, runs [][2]uint64) testRAM {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed))
	var ram testRAM
	for i, size := range sizes {
		ram.regions = append(ram.regions, Region{GPA: gpas[i], Host: make([]byte, size)})
		ram.bm = append(ram.bm, NewBitmap(uint64(size)/PageSize))
	}
	for k, run := range runs {
		reg := k % len(sizes)
		host, bm := ram.regions[reg].Host, ram.bm[reg]
		bm.SetRange(run[0], run[1])
		for p := run[0]; p < run[0]+run[1]; p++ {
			if p%7 == 3 {
				continue // marked but all zeroes: stays a hole
			}
			for j := p * PageSize; j < (p+1)*PageSize; j += 8 {
				host[j] = byte(r.Uint32()) | 1
			}
			ram.written += PageSize
		}
	}
	return ram
}

// fresh returns zeroed RAM of the same layout, as a restorer maps it.
func (ram testRAM) fresh() []Region {
	var out []Region
	for _, r := range ram.regions {
		out = append(out, Region{GPA: r.GPA, Host: make([]byte, len(r.Host))})
	}
	return out
}

func sameRAM(t *testing.T, got, want []Region) {
	t.Helper()
	for i := range want {
		if !bytes.Equal(got[i].Host, want[i].Host) {
			t.Fatalf("region %d differs after load", i)
		}
	}
}

func diskBytes(t *testing.T, path string) (size, used int64) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size(), st.Sys().(*syscall.Stat_t).Blocks * 512
}

func TestMemoryFileSparse(t *testing.T) {
	const mib = 1 << 20
	// 1 MiB populated in a 64 MiB region, in four runs; a second region
	// checks the file offsets of later regions.
	ram := newTestRAM(t, 1, []int{64 * mib, 2 * mib}, []uint64{0, 1 << 32},
		[][2]uint64{{0, 64}, {10, 16}, {1000, 64}, {200, 16}, {16000, 128}})
	path := filepath.Join(t.TempDir(), "memory")
	written, err := WriteMemory(path, ram.regions, ram.bm)
	if err != nil {
		t.Fatal(err)
	}
	if written != ram.written {
		t.Errorf("wrote %d bytes, want %d", written, ram.written)
	}
	size, used := diskBytes(t, path)
	t.Logf("memory file: %d bytes apparent, %d on disk, %d populated (%d marked pages)", size, used, written, ram.bm[0].Count()+ram.bm[1].Count())
	if size != 66*mib {
		t.Errorf("file is %d bytes, want %d", size, 66*mib)
	}
	if used > 2*mib {
		t.Errorf("file uses %d bytes on disk for %d populated: not sparse", used, written)
	}
	got := ram.fresh()
	if err := LoadMemory(path, got, ram.bm); err != nil {
		t.Fatal(err)
	}
	sameRAM(t, got, ram.regions)

	// Each page is at its region's file offset plus its page offset.
	f, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if p := 12 * PageSize; !bytes.Equal(f[64*mib+p:64*mib+p+PageSize], ram.regions[1].Host[p:p+PageSize]) ||
		bytes.Equal(f[64*mib+p:64*mib+p+PageSize], zeroPage[:]) {
		t.Error("page 12 of region 1 is not at 64 MiB + its offset")
	}
}

func TestLoadMemoryRefuses(t *testing.T) {
	ram := newTestRAM(t, 2, []int{16 * PageSize}, []uint64{0}, [][2]uint64{{2, 4}})
	path := filepath.Join(t.TempDir(), "memory")
	if _, err := WriteMemory(path, ram.regions, ram.bm); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 10*PageSize); err != nil {
		t.Fatal(err)
	}
	err := LoadMemory(path, ram.fresh(), ram.bm)
	want := "memory file is 40960 bytes, descriptor needs 65536"
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), want) {
		t.Fatalf("LoadMemory of a short file: %v, want ErrCorrupt containing %q", err, want)
	}
	t.Log(err)

	for _, tc := range []struct {
		name    string
		regions []Region
		bm      []*Bitmap
		want    string
	}{
		{"missing bitmap", ram.fresh(), nil, "1 regions but 0 page bitmaps"},
		{"bitmap of another size", ram.fresh(), []*Bitmap{NewBitmap(15)}, "does not match its bitmap of 15 pages"},
		{"unaligned region", []Region{{Host: make([]byte, 100)}}, []*Bitmap{NewBitmap(0)}, "region 0 of 100 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := LoadMemory(path, tc.regions, tc.bm); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadMemory: %v, want an error containing %q", err, tc.want)
			}
			if _, err := WriteMemory(path+"2", tc.regions, tc.bm); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("WriteMemory: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
