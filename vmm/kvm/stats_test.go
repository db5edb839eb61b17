package kvm

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// statsFile builds a binary statistics file as KVM lays one out: header,
// id string, descriptors, data.
func statsFile(nameSize uint32, descs []testStat) []byte {
	le := binary.LittleEndian
	const idSize = 16
	descOff := uint32(statsHeaderSize + idSize)
	dataOff := descOff + uint32(len(descs))*(statsDescSize+nameSize)
	var b []byte
	for _, v := range []uint32{0, nameSize, uint32(len(descs)), statsHeaderSize, descOff, dataOff} {
		b = le.AppendUint32(b, v)
	}
	b = append(b, make([]byte, idSize)...)
	copy(b[statsHeaderSize:], "kvm-1234/vcpu-0")
	var data []byte
	for _, d := range descs {
		b = le.AppendUint32(b, d.flags)
		b = le.AppendUint16(b, 0) // exponent
		b = le.AppendUint16(b, uint16(len(d.values)))
		b = le.AppendUint32(b, uint32(len(data)))
		b = le.AppendUint32(b, 0) // bucket size
		name := make([]byte, nameSize)
		copy(name, d.name)
		b = append(b, name...)
		for _, v := range d.values {
			data = le.AppendUint64(data, v)
		}
	}
	return append(b, data...)
}

type testStat struct {
	name   string
	flags  uint32
	values []uint64
}

func TestParseStats(t *testing.T) {
	file := statsFile(48, []testStat{
		{"exits", 0, []uint64{28247}},
		{"halt_poll_success_hist", 4, make([]uint64, 32)}, // a histogram: left out
		{"pf_taken", 0, []uint64{1001}},
		{"guest_mode", 1, []uint64{1}},
	})
	got, err := ParseStats(file)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"exits": 28247, "pf_taken": 1001, "guest_mode": 1}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
}

func TestParseStatsRefuses(t *testing.T) {
	good := statsFile(48, []testStat{{"exits", 0, []uint64{1}}})
	le := binary.LittleEndian
	patch := func(off int, v uint32) []byte {
		b := bytes.Clone(good)
		le.PutUint32(b[off:], v)
		return b
	}
	for _, tc := range []struct {
		name, want string
		file       []byte
	}{
		{"empty", "header", nil},
		{"truncated header", "header", good[:10]},
		{"too many statistics", "more than", patch(8, maxStats+1)},
		{"name size 0", "name size 0", patch(4, 0)},
		{"descriptors beyond the end", "descriptors at", patch(16, 1<<20)},
		{"data beyond the end", "values at", patch(20, 1<<20)},
		{"values beyond the end", "values at", patch(statsHeaderSize+16+8, 1<<31)},
		{"no name", "no name", func() []byte {
			b := bytes.Clone(good)
			b[statsHeaderSize+16+statsDescSize] = 0
			return b
		}()},
	} {
		_, err := ParseStats(tc.file)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one saying %q", tc.name, err, tc.want)
		}
	}
}

func FuzzParseStats(f *testing.F) {
	f.Add(statsFile(48, []testStat{{"exits", 0, []uint64{1}}, {"h", 3, []uint64{1, 2}}}))
	f.Add(statsFile(8, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseStats(b) // must not panic
	})
}
