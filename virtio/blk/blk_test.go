package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/sfvmm/sfvmm/virtio"
)

// memDisk is a backend in memory that records discards and flushes.
type memDisk struct {
	data     []byte
	ro       bool
	flushes  int
	discards []string
}

func (m *memDisk) ReadVec(bufs [][]byte, off int64) (int, error) {
	n := 0
	for _, b := range bufs {
		n += copy(b, m.data[off+int64(n):])
	}
	return n, nil
}

func (m *memDisk) WriteVec(bufs [][]byte, off int64) (int, error) {
	n := 0
	for _, b := range bufs {
		n += copy(m.data[off+int64(n):], b)
	}
	return n, nil
}

func (m *memDisk) Size() uint64   { return uint64(len(m.data)) }
func (m *memDisk) ReadOnly() bool { return m.ro }
func (m *memDisk) Flush() error   { m.flushes++; return nil }
func (m *memDisk) Discard(off, n int64) error {
	m.discards = append(m.discards, fmt.Sprintf("%d+%d", off, n))
	clear(m.data[off : off+n])
	return nil
}

func header(typ uint32, sec uint64) []byte {
	h := binary.LittleEndian.AppendUint32(nil, typ)
	h = binary.LittleEndian.AppendUint32(h, 0)
	return binary.LittleEndian.AppendUint64(h, sec)
}

// TestRequests serves each request type and checks the data, the status
// and the length returned.
func TestRequests(t *testing.T) {
	disk := &memDisk{data: make([]byte, 64*sector)}
	for i := range disk.data {
		disk.data[i] = byte(i / sector)
	}
	d := New(disk, "disk-serial-0123456789abc")
	status := []byte{0xff}

	// A write of two sectors split across buffers at sector 3.
	w1, w2 := bytes.Repeat([]byte{0xaa}, 700), bytes.Repeat([]byte{0xbb}, 2*sector-700)
	n, err := d.Handle(0, virtio.Chain{Readable: [][]byte{header(typeOut, 3), w1, w2}, Writable: [][]byte{status}})
	if err != nil || n != 1 || status[0] != statusOK {
		t.Fatalf("write: %d written, status %d, %v", n, status[0], err)
	}
	if !bytes.Equal(disk.data[3*sector:5*sector], append(append([]byte{}, w1...), w2...)) {
		t.Error("write: the disk does not hold the data")
	}
	// A read of sectors 2..5 into two buffers, the status in the second.
	in := make([]byte, 4*sector+1)
	n, err = d.Handle(0, virtio.Chain{Readable: [][]byte{header(typeIn, 2)}, Writable: [][]byte{in[:sector], in[sector:]}})
	if err != nil || n != 4*sector+1 || in[4*sector] != statusOK {
		t.Fatalf("read: %d written, status %d, %v", n, in[4*sector], err)
	}
	if !bytes.Equal(in[:4*sector], disk.data[2*sector:6*sector]) {
		t.Error("read: wrong data")
	}
	id := make([]byte, idSize+1)
	if n, _ = d.Handle(0, virtio.Chain{Readable: [][]byte{header(typeGetID, 0)}, Writable: [][]byte{id}}); n != idSize+1 || string(id[:idSize]) != "disk-serial-01234567" {
		t.Errorf("get id: %d written, %q", n, id[:idSize])
	}
	d.Handle(0, virtio.Chain{Readable: [][]byte{header(typeFlush, 0)}, Writable: [][]byte{status}})
	if disk.flushes != 1 || status[0] != statusOK {
		t.Errorf("flush: %d flushes, status %d", disk.flushes, status[0])
	}
	seg := binary.LittleEndian.AppendUint64(nil, 8)
	seg = binary.LittleEndian.AppendUint32(seg, 16)
	seg = binary.LittleEndian.AppendUint32(seg, 0)
	d.Handle(0, virtio.Chain{Readable: [][]byte{header(typeDiscard, 0), seg}, Writable: [][]byte{status}})
	if fmt.Sprint(disk.discards) != "[4096+8192]" || status[0] != statusOK {
		t.Errorf("discard: %v, status %d", disk.discards, status[0])
	}

	// What the disk cannot do is the request's status, not a failure.
	for _, c := range []struct {
		name   string
		chain  virtio.Chain
		status byte
	}{
		{"read past the end", virtio.Chain{Readable: [][]byte{header(typeIn, 63)}, Writable: [][]byte{make([]byte, 2*sector), status}}, statusIOErr},
		{"read at a huge sector", virtio.Chain{Readable: [][]byte{header(typeIn, 1<<62)}, Writable: [][]byte{make([]byte, sector), status}}, statusIOErr},
		{"write of part of a sector", virtio.Chain{Readable: [][]byte{header(typeOut, 0), make([]byte, 100)}, Writable: [][]byte{status}}, statusIOErr},
		{"discard past the end", virtio.Chain{Readable: [][]byte{header(typeDiscard, 0), binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, 60), 8)}, Writable: [][]byte{status}}, statusIOErr},
		{"discard of a part segment", virtio.Chain{Readable: [][]byte{header(typeDiscard, 0), make([]byte, 10)}, Writable: [][]byte{status}}, statusIOErr},
		{"unknown type", virtio.Chain{Readable: [][]byte{header(99, 0)}, Writable: [][]byte{status}}, statusUnsupp},
	} {
		status[0] = 0xff
		if _, err := d.Handle(0, c.chain); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if got := c.chain.Writable[len(c.chain.Writable)-1][0]; got != c.status {
			t.Errorf("%s: status %d, want %d", c.name, got, c.status)
		}
	}
}

func TestReadOnly(t *testing.T) {
	disk := &memDisk{data: make([]byte, 8*sector), ro: true}
	d := New(disk, "")
	if d.Features()&featureRO == 0 || d.Features()&featureDiscard != 0 {
		t.Errorf("features %#x of a read-only disk", d.Features())
	}
	status := []byte{0xff}
	d.Handle(0, virtio.Chain{Readable: [][]byte{header(typeOut, 0), make([]byte, sector)}, Writable: [][]byte{status}})
	if status[0] != statusIOErr {
		t.Errorf("write to a read-only disk: status %d", status[0])
	}
}

func TestConfig(t *testing.T) {
	c := New(&memDisk{data: make([]byte, 1<<20)}, "").Config()
	if got := binary.LittleEndian.Uint64(c); got != 2048 {
		t.Errorf("capacity %d sectors, want 2048", got)
	}
}

// TestMalformed: chains that cannot be a request fail the device.
func TestMalformed(t *testing.T) {
	d := New(&memDisk{data: make([]byte, 8*sector)}, "")
	for _, c := range []struct {
		name  string
		chain virtio.Chain
	}{
		{"short header", virtio.Chain{Readable: [][]byte{make([]byte, 15)}, Writable: [][]byte{{0}}}},
		{"no status", virtio.Chain{Readable: [][]byte{header(typeFlush, 0)}}},
		{"no status, empty buffers", virtio.Chain{Readable: [][]byte{header(typeFlush, 0)}, Writable: [][]byte{{}, {}}}},
		{"read with readable data", virtio.Chain{Readable: [][]byte{header(typeIn, 0), make([]byte, sector)}, Writable: [][]byte{{0}}}},
		{"write with writable data", virtio.Chain{Readable: [][]byte{header(typeOut, 0)}, Writable: [][]byte{make([]byte, sector), {0}}}},
	} {
		if _, err := d.Handle(0, c.chain); !errors.Is(err, virtio.ErrMalformed) {
			t.Errorf("%s: %v, want malformed", c.name, err)
		}
	}
}

// FuzzRequest: any chain is served, answered with a status, or refused as
// malformed; never a panic, never an access outside the disk.
func FuzzRequest(f *testing.F) {
	f.Add(header(typeIn, 1), uint16(sector+1), uint8(2))
	f.Add(append(header(typeDiscard, 0), make([]byte, 16)...), uint16(1), uint8(1))
	f.Add(append(header(typeOut, 7), make([]byte, sector)...), uint16(1), uint8(3))
	f.Fuzz(func(t *testing.T, readable []byte, writable uint16, split uint8) {
		d := New(&memDisk{data: make([]byte, 8*sector)}, "id")
		c := virtio.Chain{}
		// Split both sides into buffers at a fuzzed stride.
		stride := int(split%32) + 1
		for len(readable) > 0 {
			k := min(stride, len(readable))
			c.Readable = append(c.Readable, readable[:k])
			readable = readable[k:]
		}
		w := make([]byte, int(writable)%(4*sector))
		for len(w) > 0 {
			k := min(stride*17, len(w))
			c.Writable = append(c.Writable, w[:k])
			w = w[k:]
		}
		if _, err := d.Handle(0, c); err != nil && !errors.Is(err, virtio.ErrMalformed) {
			t.Fatal(err)
		}
	})
}
