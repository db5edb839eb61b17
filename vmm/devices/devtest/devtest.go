// Package devtest holds the test helpers shared by sfvmm's device packages:
// a save→restore→save round trip for snapshot state, and a driver that turns
// arbitrary bytes into guest register accesses, for fuzzing devices.
//
// It is imported by tests only; nothing in the VMM depends on it.
package devtest

import (
	"encoding/binary"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/sfvmm/sfvmm/vmm/bus"
)

// Snapshotter is a component whose state can be saved as a plain value and
// restored from it.
type Snapshotter[S any] interface {
	Save() (S, error)
	Restore(S) error
}

// RoundTrip saves from, passes the state through JSON (which refuses funcs
// and channels and drops unexported fields, so a state that survives it is
// plain data), restores the decoded state into to, saves to again, and
// checks both saves are equal. from and to may be the same component.
func RoundTrip[S any](t testing.TB, from, to Snapshotter[S]) S {
	t.Helper()
	s1, err := from.Save()
	if err != nil {
		t.Fatalf("save: %v", err)
	}
	enc, err := json.Marshal(s1)
	if err != nil {
		t.Fatalf("state %T is not plain data: %v", s1, err)
	}
	var dec S
	if err := json.Unmarshal(enc, &dec); err != nil {
		t.Fatalf("decode state %T: %v", s1, err)
	}
	if err := to.Restore(dec); err != nil {
		t.Fatalf("restore: %v", err)
	}
	s2, err := to.Save()
	if err != nil {
		t.Fatalf("save after restore: %v", err)
	}
	if !reflect.DeepEqual(s1, s2) {
		t.Fatalf("save→restore→save changed the state:\n before %+v\n after  %+v", s1, s2)
	}
	return s2
}

// MaxFuzzInput is the longest input the device fuzz targets act on; they
// return at once on longer ones, which therefore never look interesting.
// Go's fuzzer minimizes each new interesting input, with a pass quadratic
// in its length, for up to -fuzzminimizetime (a minute by default) while
// reporting 0 execs/sec; short inputs keep that short. 73 accesses reach
// any device state; for throughput also pass -fuzzminimizetime=5s.
const MaxFuzzInput = 512

// opLen is the number of input bytes one access consumes.
const opLen = 6

// widths are the access widths Drive uses, including ones a bus never
// sends (0, 3, 8), because a device must not panic on those either.
var widths = [8]int{1, 1, 2, 4, 0, 3, 8, 1}

// Drive interprets b as a stream of accesses to d, a device claiming size
// bytes, and performs them. Each access takes 6 bytes: a control byte
// (bit 0: write, bits 1-3: width, bit 4: offset counted down from the top
// of the 64-bit space), an offset byte (taken modulo size+2, so that
// offsets just past the range occur too) and 4 value bytes. It exists to
// show that no sequence of guest accesses makes a device panic, including
// ones a bus would never pass on.
func Drive(d bus.Device, size uint64, b []byte) {
	var buf [8]byte
	for ; len(b) >= opLen; b = b[opLen:] {
		ctl, off := b[0], uint64(b[1])%(size+2)
		if ctl&0x10 != 0 {
			off = ^off
		}
		data := buf[:widths[(ctl>>1)&7]]
		binary.LittleEndian.PutUint32(buf[:4], binary.LittleEndian.Uint32(b[2:6]))
		if ctl&1 != 0 {
			d.Write(off, data)
		} else {
			d.Read(off, data)
		}
	}
}

// Value assembles the little-endian value of an access's data, as x86 port
// I/O delivers it.
func Value(data []byte) uint64 {
	var v uint64
	for i := len(data) - 1; i >= 0; i-- {
		v = v<<8 | uint64(data[i])
	}
	return v
}

// Bytes returns the n-byte little-endian encoding of v, for writing an
// access of width n.
func Bytes(v uint64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	return b
}
