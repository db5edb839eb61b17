package memory

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"

	"github.com/sfvmm/sfvmm/vmm/localfs"
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
			// KVM maps huge pages only where host and guest addresses
			// agree modulo 2 MiB.
			if host := uintptr(unsafe.Pointer(&r.Host[0])); host%HugePageSize != 0 {
				t.Errorf("size %#x region %d: host address %#x is not 2 MiB aligned", tc.size, i, host)
			}
			r.Host[0], r.Host[len(r.Host)-1] = 1, 2
		}
		if err := m.Close(); err != nil {
			t.Errorf("size %#x: close: %v", tc.size, err)
		}
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
	if !localfs.Is(f) {
		t.Fatalf("the test's file is not on local storage (TMPDIR %s)", os.TempDir())
	}
	if m.RemoteFile() {
		t.Error("RAM mapped from a file on local storage counts as remote")
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

// smapsOf returns the /proc/self/smaps fields of the mappings that overlap
// b, summed, and how many mappings that is.
func smapsOf(t *testing.T, b []byte) (fields map[string]uint64, mappings int) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	lo := uint64(uintptr(unsafe.Pointer(&b[0])))
	hi := lo + uint64(len(b))
	fields = map[string]uint64{}
	in := false
	for line := range strings.Lines(string(data)) {
		var start, end uint64
		if n, _ := fmt.Sscanf(line, "%x-%x ", &start, &end); n == 2 {
			in = start < hi && end > lo
			if in {
				mappings++
			}
			continue
		}
		var key string
		var kib uint64
		if n, _ := fmt.Sscanf(line, "%s %d kB", &key, &kib); in && n == 2 {
			fields[strings.TrimSuffix(key, ":")] += kib
		}
	}
	return fields, mappings
}

// Guest RAM is on huge pages, and a fork (KeepPages) leaves them as they
// are, as does a Discard after it (memtap/server's TestFreezeHugePages
// shows the freeze of huge pages).
func TestHugePagesKept(t *testing.T) {
	thp, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || strings.Contains(string(thp), "[never]") {
		t.Skipf("transparent huge pages are off here (%q, %v)", thp, err)
	}
	const size = 16 << 20
	m, err := New(size)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	host := m.Regions()[0].Host
	for i := 0; i < size; i += PageSize {
		host[i] = 1
	}
	before, n := smapsOf(t, host)
	if before["AnonHugePages"] == 0 || n != 1 {
		t.Fatalf("%d KiB in huge pages in %d mappings, want some in 1 (THP: %q)", before["AnonHugePages"], n, thp)
	}
	m.KeepPages()
	m.Discard(host[HugePageSize : 2*HugePageSize])
	after, n := smapsOf(t, host)
	if after["AnonHugePages"] != before["AnonHugePages"] || n != 1 {
		t.Errorf("after KeepPages and a Discard: %d KiB in huge pages in %d mappings, want %d in 1",
			after["AnonHugePages"], n, before["AnonHugePages"])
	}
}

// Discard zeroes what it is given; before KeepPages it drops the whole
// pages (they are no longer resident), after it writes zeros (they stay
// resident: a fork's memory server sees writes only).
func TestDiscard(t *testing.T) {
	for _, keep := range []bool{false, true} {
		m, err := New(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if keep {
			m.KeepPages()
		}
		host := m.Regions()[0].Host
		for i := range host {
			host[i] = 0xa5
		}
		m.Discard(host[PageSize+100 : 5*PageSize+100]) // pages 2-4 whole, edges of 1 and 5
		// Residency first: reading a dropped page maps the zero page.
		vec, err := m.Regions()[0].Residency()
		if err != nil {
			t.Fatal(err)
		}
		if dropped := vec[3]&1 == 0; dropped == keep || vec[1]&1 == 0 {
			t.Errorf("keep %v: page 3 resident %v, page 1 resident %v", keep, vec[3]&1 != 0, vec[1]&1 != 0)
		}
		for i, v := range host {
			want := byte(0xa5)
			if i >= PageSize+100 && i < 5*PageSize+100 {
				want = 0
			}
			if v != want {
				t.Fatalf("keep %v: byte %#x is %#x, want %#x", keep, i, v, want)
			}
		}
	}
}
