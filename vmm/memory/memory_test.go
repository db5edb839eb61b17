package memory

import (
	"errors"
	"os"
	"testing"
)

func TestLayout(t *testing.T) {
	for _, tc := range []struct {
		size uint64
		want []Region
	}{
		{64 << 20, []Region{{GPA: 0, Size: 64 << 20}}},
		{HoleStart, []Region{{GPA: 0, Size: HoleStart}}},
		{4 << 30, []Region{{GPA: 0, Size: HoleStart}, {GPA: HighStart, Size: 1 << 30}}},
	} {
		m, err := New(tc.size)
		if err != nil {
			t.Fatal(err)
		}
		got := m.Regions()
		if len(got) != len(tc.want) {
			t.Fatalf("size %#x: %d regions, want %d", tc.size, len(got), len(tc.want))
		}
		for i, r := range got {
			if r.GPA != tc.want[i].GPA || r.Size != tc.want[i].Size || uint64(len(r.Host)) != r.Size {
				t.Errorf("size %#x region %d: %#x+%#x, want %#x+%#x", tc.size, i, r.GPA, r.Size, tc.want[i].GPA, tc.want[i].Size)
			}
		}
		m.Close()
	}
}

func TestBoundsChecked(t *testing.T) {
	m, err := New(4 << 30)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.WriteAt([]byte("ab"), HoleStart-1); !errors.Is(err, ErrRange) {
		t.Errorf("write across the end of low RAM: %v", err)
	}
	if _, err := m.ReadAt(make([]byte, 1), 0xD000_0000); !errors.Is(err, ErrRange) {
		t.Errorf("read in the PCI hole: %v", err)
	}
	if _, err := m.ReadAt(make([]byte, 1), -1); !errors.Is(err, ErrRange) {
		t.Errorf("read at -1: %v", err)
	}
	if _, err := m.Slice(HighStart+(1<<30)-1, 2); !errors.Is(err, ErrRange) {
		t.Errorf("slice past the end of RAM: %v", err)
	}
	if _, err := m.WriteAt([]byte("high"), HighStart+10); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := m.ReadAt(b, HighStart+10); err != nil || string(b) != "high" {
		t.Errorf("read back %q, %v", b, err)
	}
}

func TestRefusesBadSizes(t *testing.T) {
	for _, s := range []uint64{0, 4095, MaxSize + PageSize} {
		if m, err := New(s); err == nil {
			m.Close()
			t.Errorf("New(%d) succeeded", s)
		}
	}
}

func TestMapFile(t *testing.T) {
	m, err := New(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	f, err := os.CreateTemp(t.TempDir(), "mem")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("from the file"), 2*PageSize+PageSize+7); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(2*PageSize + 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := m.MapFile(f, []int64{2 * PageSize}); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 13)
	if _, err := m.ReadAt(b, PageSize+7); err != nil || string(b) != "from the file" {
		t.Errorf("guest reads %q, %v", b, err)
	}
	if _, err := m.WriteAt([]byte("guest"), PageSize+7); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(b, 2*PageSize+PageSize+7); err != nil || string(b) != "from the file" {
		t.Errorf("a guest write reached the file: %q, %v", b, err)
	}
	if err := m.MapFile(f, []int64{1}); err == nil {
		t.Error("an unaligned offset was accepted")
	}
}
