package balloon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/sfvmm/sfvmm/virtio"
	"github.com/sfvmm/sfvmm/virtio/virtiotest"
)

// Inflated pages and reported free ranges are discarded; what is not
// theirs is not.
func TestDiscards(t *testing.T) {
	mem := make(virtiotest.RAM, 16*pageSize)
	var got []int
	d := New(mem, func(b []byte) { got = append(got, mem.Offset(b)/pageSize, len(b)/pageSize) })
	pfns := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 3), 7)
	if _, err := d.Handle(queueInflate, virtio.Chain{Readable: [][]byte{pfns}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Handle(queueDeflate, virtio.Chain{Readable: [][]byte{pfns}}); err != nil {
		t.Fatal(err)
	}
	if n, err := d.Handle(queueReporting, virtio.Chain{Writable: [][]byte{mem[8*pageSize : 12*pageSize]}}); err != nil || n != 0 {
		t.Fatalf("report: %d written, %v", n, err)
	}
	want := []int{3, 1, 7, 1, 8, 4} // page, count
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("discarded %v, want %v", got, want)
	}
	for _, bad := range []struct {
		q int
		c virtio.Chain
	}{
		{queueInflate, virtio.Chain{Readable: [][]byte{binary.LittleEndian.AppendUint32(nil, 16)}}},
		{queueInflate, virtio.Chain{Readable: [][]byte{{1, 2, 3}}}},
		{queueReporting, virtio.Chain{Readable: [][]byte{mem[:8]}}},
	} {
		if _, err := d.Handle(bad.q, bad.c); !errors.Is(err, virtio.ErrMalformed) {
			t.Errorf("queue %d, %d readable bytes: %v, want malformed", bad.q, len(bad.c.Readable[0]), err)
		}
	}
}

// FuzzHandle: any request, on any queue, either is refused as malformed or
// discards only guest RAM.
func FuzzHandle(f *testing.F) {
	f.Add(byte(0), []byte{3, 0, 0, 0, 7, 0, 0, 0})
	f.Add(byte(2), []byte{})
	f.Fuzz(func(t *testing.T, q byte, in []byte) {
		mem := make(virtiotest.RAM, 16*pageSize)
		d := New(mem, func(b []byte) {
			if mem.Offset(b) < 0 {
				t.Fatal("discard outside RAM")
			}
		})
		c := virtio.Chain{Readable: [][]byte{in}}
		if q%2 == 1 {
			c = virtio.Chain{Writable: [][]byte{mem[:len(in)%len(mem)]}}
		}
		if _, err := d.Handle(int(q%3), c); err != nil && !errors.Is(err, virtio.ErrMalformed) {
			t.Fatal(err)
		}
	})
}
