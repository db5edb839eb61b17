package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/sfvmm/sfvmm/vmm/devices/rtc"
	"github.com/sfvmm/sfvmm/vmm/devices/serial"
	"github.com/sfvmm/sfvmm/vmm/kvm"
)

// Test types shaped like the VMM's state: kvm structs with padding, a LAPIC
// page, MSR lists, device states, and some kinds the kvm types lack.
type testVCPU struct {
	ID     uint32
	Regs   kvm.Regs
	Sregs  kvm.Sregs
	LAPIC  kvm.LAPIC
	MSRs   []kvm.MSREntry
	CPUID  []kvm.CPUIDEntry
	Events [3]int8
}

type testDevice struct {
	Name string
	Regs [4]uint16
	_    [3]byte
	On   bool
}

type testTree struct {
	Name string
	Kids []testTree
}

// testLeaf is a struct used twice in one type, which is not recursion.
type testLeaf struct{ A, B uint8 }

type testState struct {
	CPUs    []testVCPU
	Page    [1024]byte
	Serial  serial.State
	RTC     rtc.State
	Offsets []int64
	Devices [2]testDevice
	Tags    []string
	Nested  [][]byte
	Flag    bool
	I16     int16
	N       int
	U       uint
	Empty   struct{}
	Leaves  [2][]testLeaf
	Leaf    testLeaf
}

func sampleState() *testState {
	s := &testState{
		Serial: serial.State{IER: 1, LCR: 3, RX: []byte("hi"), Dropped: 7, THRPending: true},
		RTC: rtc.State{Index: 0x0b, CMOS: [128]byte{1, 2, 3}, Offset: -90 * time.Second,
			Frozen: rtc.Clock{Sec: 5, Year: 2026, Month: 7}},
		Offsets: []int64{-1, 0, 1 << 62, -1 << 63},
		Devices: [2]testDevice{{Name: "uart", Regs: [4]uint16{1, 2, 3, 0xffff}, On: true}, {Name: "ünïcode"}},
		Tags:    []string{"", "a", strings.Repeat("x", 300)},
		Nested:  [][]byte{{1}, nil, bytes.Repeat([]byte{0xaa}, 200)},
		Flag:    true,
		I16:     -12345,
		N:       -42,
		U:       1 << 63,
		Leaves:  [2][]testLeaf{{{1, 2}}, {{3, 4}, {5, 6}}},
		Leaf:    testLeaf{7, 8},
	}
	for i := range 2 {
		v := testVCPU{
			ID:     uint32(i),
			Regs:   kvm.Regs{RAX: 0xdeadbeef, RIP: 0xfff0, RFLAGS: 2, R15: ^uint64(0)},
			MSRs:   []kvm.MSREntry{{Index: 0x10, Data: 123}, {Index: 0xc0000080, Data: 0x500}},
			CPUID:  []kvm.CPUIDEntry{{Function: 1, EAX: 0x806f8, ECX: 1 << 31}},
			Events: [3]int8{-1, 0, 1},
		}
		v.Sregs.CS = kvm.Segment{Base: 0xffff0000, Limit: 0xffff, Selector: 0xf000, Type: 11, Present: 1, S: 1}
		v.Sregs.GDT = kvm.DTable{Base: 0x1000, Limit: 0x27}
		v.Sregs.InterruptBitmap = [4]uint64{1, 2, 3, 4}
		v.Sregs.EFER = 0xd01
		for j := range v.LAPIC.Regs {
			v.LAPIC.Regs[j] = byte(j * (i + 3))
		}
		s.CPUs = append(s.CPUs, v)
	}
	for i := range s.Page {
		s.Page[i] = byte(i)
	}
	return s
}

// sampleHeader has a two-region layout with a few populated runs.
func sampleHeader(t testing.TB) Header {
	t.Helper()
	low, high := NewBitmap(16), NewBitmap(8)
	low.SetRange(0, 3)
	low.Set(9)
	high.SetRange(4, 4)
	return Header{
		CPUs: 2, MemBytes: 24 * PageSize, CreatedUnixNano: -5,
		RequiredCPUFeatures: []string{"sse2", "xsave"},
		Memory: []MemoryRegion{
			{GPA: 0, Size: 16 * PageSize, Pages: low},
			{GPA: 1 << 32, Size: 8 * PageSize, Pages: high},
		},
	}
}

func mustEncode(t testing.TB, h Header, state any) []byte {
	t.Helper()
	b, err := Encode(h, state)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		h     Header
		state *testState
	}{
		{"zero", Header{}, &testState{}},
		{"sample", sampleHeader(t), sampleState()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := mustEncode(t, tc.h, tc.state)
			var got testState
			h, err := Decode(b, &got)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(&got, tc.state) {
				t.Errorf("state round trip differs:\n got %+v\nwant %+v", got, *tc.state)
			}
			want := tc.h
			want.Version = Version
			if !headerEqual(h, want) {
				t.Errorf("header round trip: got %+v, want %+v", h, want)
			}
			if again := mustEncode(t, h, &got); !bytes.Equal(again, b) {
				t.Errorf("Encode(Decode(b)) differs from b")
			}
			t.Logf("%s: descriptor %d bytes", tc.name, len(b))
		})
	}
}

func headerEqual(a, b Header) bool {
	if len(a.Memory) != len(b.Memory) {
		return false
	}
	for i := range a.Memory {
		x, y := a.Memory[i], b.Memory[i]
		if x.GPA != y.GPA || x.Size != y.Size || !x.Pages.Equal(y.Pages) {
			return false
		}
	}
	a.Memory, b.Memory = nil, nil
	return reflect.DeepEqual(a, b)
}

// Padding is neither written nor restored: garbage in a blank field changes
// nothing in the encoding and decodes as zero.
func TestBlankFieldsSkipped(t *testing.T) {
	clean := sampleState()
	dirty := sampleState()
	seg := &dirty.CPUs[0].Sregs.CS
	f, _ := reflect.TypeOf(*seg).FieldByName("Unusable")
	*(*byte)(unsafe.Add(unsafe.Pointer(seg), f.Offset+1)) = 0x5a // the _ after Unusable
	msr := &dirty.CPUs[1].MSRs[0]
	*(*uint32)(unsafe.Add(unsafe.Pointer(msr), 4)) = 0xffffffff // the _ after Index
	if reflect.DeepEqual(clean, dirty) {
		t.Fatal("padding was not dirtied")
	}
	a, b := mustEncode(t, Header{}, clean), mustEncode(t, Header{}, dirty)
	if !bytes.Equal(a, b) {
		t.Fatal("padding bytes reached the encoding")
	}
	var got testState
	if _, err := Decode(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&got, clean) {
		t.Fatal("padding did not decode as zero")
	}
}

func TestEncodeRefuses(t *testing.T) {
	type inner struct {
		OK  uint8
		Bad map[string]int
	}
	for _, tc := range []struct {
		name  string
		state any
		want  string
	}{
		{"map", &struct{ A []inner }{}, "state.A[].Bad: map[string]int is a map"},
		{"pointer", &struct{ P *int }{}, "state.P: *int is a ptr"},
		{"interface", &struct{ I any }{}, "state.I: interface {} is a interface"},
		{"func", &struct{ F func() }{}, "state.F: func() is a func"},
		{"chan", &struct{ C [2]chan int }{}, "state.C[]: chan int is a chan"},
		{"float", &struct{ F float64 }{}, "state.F: float64 is a float64"},
		{"unexported", &struct{ x int }{}, "state.x: unexported field"},
		{"zero-size elements", &struct{ S []struct{} }{}, "state.S: slice of struct {}"},
		{"recursive", &struct{ T [1]testTree }{}, "state.T[].Kids[]: snapshot.testTree contains itself"},
		{"not a pointer", struct{}{}, "state is struct {}, want a non-nil pointer"},
		{"nil", (*testState)(nil), "want a non-nil pointer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Encode(Header{}, tc.state)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Encode: %v, want an error containing %q", err, tc.want)
			}
			if errors.Is(err, ErrCorrupt) {
				t.Errorf("a type error is not corruption: %v", err)
			}
		})
	}
}

func TestEncodeRefusesBadLayout(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(h *Header)
		want string
	}{
		{"size mismatch", func(h *Header) { h.MemBytes++ }, "regions hold"},
		{"unaligned", func(h *Header) { h.Memory[1].GPA++ }, "not page-aligned"},
		{"overlap", func(h *Header) { h.Memory[1].GPA = PageSize }, "overlaps"},
		{"bitmap length", func(h *Header) { h.Memory[0].Pages = NewBitmap(3) }, "bitmap of 3"},
		{"no bitmap", func(h *Header) { h.Memory[0].Pages = nil }, "bitmap of 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := sampleHeader(t)
			tc.mod(&h)
			if _, err := Encode(h, &testState{}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Encode: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

type smallState struct {
	A uint16
	B []testDevice
	C bool
}

func smallDescriptor(t testing.TB) []byte {
	h := sampleHeader(t)
	return mustEncode(t, h, &smallState{A: 7, B: []testDevice{{Name: "x", On: true}}, C: true})
}

func TestEveryByteCorrupted(t *testing.T) {
	b := smallDescriptor(t)
	t.Logf("descriptor of %d bytes", len(b))
	for i := range b {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			c := bytes.Clone(b)
			c[i] ^= x
			var s smallState
			_, err := Decode(c, &s)
			want := ErrCorrupt
			if i >= 8 && i < 12 {
				want = ErrVersion
			}
			if !errors.Is(err, want) {
				t.Fatalf("byte %d ^ %#x: Decode: %v, want %v", i, x, err, want)
			}
			if !reflect.DeepEqual(s, smallState{}) {
				t.Fatalf("byte %d ^ %#x: failed Decode wrote the state", i, x)
			}
		}
	}
}

func TestTruncatedOrExtended(t *testing.T) {
	b := smallDescriptor(t)
	for n := range len(b) {
		if _, err := Decode(b[:n], &smallState{}); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d of %d bytes: Decode: %v, want ErrCorrupt", n, len(b), err)
		}
	}
	for _, tail := range [][]byte{{0}, []byte("garbage")} {
		if _, err := Decode(append(bytes.Clone(b), tail...), &smallState{}); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("with %d trailing bytes: Decode: %v, want ErrCorrupt", len(tail), err)
		}
	}
}

// reseal replaces the payload of a descriptor and signs it as version v, as
// a different build (or a careful attacker) would.
func reseal(payload []byte, v uint32) []byte {
	return seal(append(make([]byte, prefixLen), payload...), v)
}

// A descriptor of another version is refused with ErrVersion, naming both
// versions, by every entry point and whatever follows its version: the
// rest may be framed in a way this build does not know.
func TestOtherVersion(t *testing.T) {
	b := smallDescriptor(t)
	payload := b[prefixLen : len(b)-sumLen]
	versionOnly := func(v uint32) []byte {
		return binary.LittleEndian.AppendUint32([]byte(magic), v)
	}
	bodies := []struct {
		name string
		desc func(v uint32) []byte
	}{
		{"sealed", func(v uint32) []byte { return reseal(payload, v) }},
		{"garbage after the version", func(v uint32) []byte { return append(versionOnly(v), bytes.Repeat([]byte{0xff}, 100)...) }},
		{"nothing after the version", versionOnly},
	}
	// Each entry point, given a descriptor; those that read a directory get
	// one without a memory file, so they fail on any check but the version.
	entries := []struct {
		name string
		call func(t *testing.T, desc []byte) error
	}{
		{"Decode", func(t *testing.T, desc []byte) error {
			_, err := Decode(desc, &smallState{})
			return err
		}},
		{"DecodeHeader", func(t *testing.T, desc []byte) error {
			_, err := DecodeHeader(desc)
			return err
		}},
		{"Open", func(t *testing.T, desc []byte) error {
			_, err := Open(descriptorDir(t, desc, 0))
			return err
		}},
		{"Read", func(t *testing.T, desc []byte) error {
			_, err := Read(descriptorDir(t, desc, 0), &smallState{})
			return err
		}},
		{"Open a descriptor too large for this version", func(t *testing.T, desc []byte) error {
			_, err := Open(descriptorDir(t, desc, maxDescriptorFile+1))
			return err
		}},
		{"Read a descriptor too large for this version", func(t *testing.T, desc []byte) error {
			_, err := Read(descriptorDir(t, desc, maxDescriptorFile+1), &smallState{})
			return err
		}},
	}
	for _, v := range []uint32{Version - 1, Version + 1, math.MaxUint32} {
		for _, body := range bodies {
			for _, e := range entries {
				t.Run(fmt.Sprintf("v%d/%s/%s", v, body.name, e.name), func(t *testing.T) {
					err := e.call(t, body.desc(v))
					if !errors.Is(err, ErrVersion) || errors.Is(err, ErrCorrupt) {
						t.Fatalf("%v, want ErrVersion and not ErrCorrupt", err)
					}
					for _, n := range []uint32{v, Version} {
						if re := regexp.MustCompile(fmt.Sprintf(`\bversion %d\b`, n)); !re.MatchString(err.Error()) {
							t.Errorf("%q does not name version %d", err, n)
						}
					}
					t.Log(err)
				})
			}
		}
	}
}

// descriptorDir makes a snapshot directory holding only a descriptor file
// of desc, extended with a hole to size bytes if size is larger.
func descriptorDir(t *testing.T, desc []byte, size int64) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, DescriptorFile)
	if err := os.WriteFile(p, desc, 0o600); err != nil {
		t.Fatal(err)
	}
	if size > int64(len(desc)) {
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestWrongStateType(t *testing.T) {
	b := smallDescriptor(t)
	var other testState
	_, err := Decode(b, &other)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Decode into another type: %v, want ErrCorrupt", err)
	}
	t.Log(err)
}

// Inputs that pass the checksum but whose payload is wrong: each is refused
// with ErrCorrupt and a message naming what is wrong, without allocating
// what a length field promises.
func TestHostilePayload(t *testing.T) {
	enc := func(w wire) []byte {
		b, err := marshal(nil, &w, "header")
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	state := func(b ...byte) []byte { return enc(wire{State: b}) }
	huge := binary.AppendUvarint(nil, 1<<60)
	for _, tc := range []struct {
		name    string
		payload []byte
		want    string
	}{
		{"huge slice length", state(append([]byte{0, 0}, huge...)...), "state.B: length 1152921504606846976 exceeds"},
		{"huge string length", state(append(append([]byte{0, 0, 1}, huge...), make([]byte, 20)...)...), "state.B[0].Name: length"},
		{"huge header slice", append([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, huge...), "header.RequiredCPUFeatures: length"},
		{"bool 2", state(0, 0, 0, 2), "state.C: bool byte is 2"},
		{"non-minimal uvarint", state(0, 0, 0x80, 0x00, 0), "state.B: uvarint is not minimal"},
		{"trailing state", state(0, 0, 0, 1, 9), "trailing garbage after state"},
		{"truncated state", state(0, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 1), "state.C: truncated"},
		{"huge bitmap", enc(wire{MemBytes: 1 << 40, Memory: []wireRegion{{Size: 1 << 40, Pages: append([]byte{0}, binary.AppendUvarint(nil, 1<<40)...)}}}), "1099511627776 pages exceed the maximum"},
		{"bitmap of another size", enc(wire{MemBytes: PageSize, Memory: []wireRegion{{Size: PageSize, Pages: []byte{0, 2, 2}}}}), "covers 2 pages, want 1"},
		{"regions beyond 1 TiB", enc(wire{Memory: []wireRegion{{Size: 1 << 39}, {Size: 1 << 39}, {Size: PageSize}}}), "sizes exceed"},
		{"overlapping regions", enc(wire{MemBytes: 2 * PageSize, Memory: []wireRegion{{Size: PageSize, Pages: []byte{0, 1, 1}}, {Size: PageSize, Pages: []byte{0, 1, 1}}}}), "overlaps"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := Decode(reseal(tc.payload, Version), &smallState{})
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode: %v, want ErrCorrupt containing %q", err, tc.want)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
				t.Errorf("refusing it allocated %d bytes", n)
			}
		})
	}
}

// fuzzState exercises every kind the codec handles.
type fuzzState struct {
	A uint8
	B int16
	C []testDevice
	D [2]bool
	E string
	F [][]uint32
	G int
	H [2]testLeaf
}

// FuzzDecode checks that Decode never panics, fails only with ErrCorrupt or
// ErrVersion, and accepts only canonical input: what it accepts re-encodes
// to the same bytes. Each input is tried as a whole descriptor and, since
// random bytes rarely pass the checksum, as a payload under a valid frame.
func FuzzDecode(f *testing.F) {
	f.Add(smallDescriptor(f))
	f.Add(mustEncode(f, Header{}, &fuzzState{}))
	f.Add(mustEncode(f, sampleHeader(f), &fuzzState{
		A: 1, B: -2, C: []testDevice{{Name: "d", On: true}}, D: [2]bool{true, false},
		E: "e", F: [][]uint32{{1, 2}, nil}, G: -3, H: [2]testLeaf{{1, 2}, {3, 4}},
	}))
	f.Fuzz(func(t *testing.T, data []byte) {
		framed := data
		if len(data) > prefixLen+sumLen {
			framed = data[prefixLen : len(data)-sumLen]
		}
		for _, in := range [][]byte{data, reseal(data, Version), reseal(framed, Version)} {
			var s fuzzState
			h, err := Decode(in, &s)
			if err != nil {
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
					t.Fatalf("Decode: %v is neither ErrCorrupt nor ErrVersion", err)
				}
				continue
			}
			again, err := Encode(h, &s)
			if err != nil {
				t.Fatalf("re-encode of accepted input: %v", err)
			}
			if !bytes.Equal(again, in) {
				t.Fatalf("accepted input re-encodes differently:\n in %x\nout %x", in, again)
			}
		}
	})
}
