package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Memory is guest RAM as a device sees it: Slice returns the host bytes
// of [gpa, gpa+n), or an error when any of it is outside RAM.
type Memory interface {
	Slice(gpa, n uint64) ([]byte, error)
}

// Descriptor flags (virtio 1.2, 2.7.5).
const (
	descNext     = 1
	descWrite    = 2
	descIndirect = 4
)

// Feature bits the transport offers for every device (virtio 1.2, 6).
const (
	FeatureIndirect = 1 << 28 // VIRTIO_F_INDIRECT_DESC: descriptor tables in guest RAM
	FeatureEventIdx = 1 << 29 // VIRTIO_F_EVENT_IDX: used_event / avail_event
	FeatureVersion1 = 1 << 32 // VIRTIO_F_VERSION_1: a modern device
)

// ErrMalformed marks what a driver put in a queue that the device cannot
// take: the device fails (DEVICE_NEEDS_RESET) rather than guess.
var ErrMalformed = errors.New("malformed")

// Malformed is an ErrMalformed error that says what is wrong.
func Malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// QueueState is a split virtqueue's configuration and progress: a plain
// value that snapshots keep.
type QueueState struct {
	Size               uint16 // entries, a power of 2; 0: not configured
	Ready              bool
	Desc, Avail, Used  uint64 // guest-physical addresses of the three parts
	LastAvail, UsedIdx uint16 // next avail entry to take, next used entry to fill
	EventIdx           bool   // VIRTIO_F_EVENT_IDX negotiated
}

// Queue is a split virtqueue (virtio 1.2, 2.7) in guest memory.
type Queue struct {
	QueueState
	// Indirect says VIRTIO_F_INDIRECT_DESC was negotiated. It is not in
	// QueueState because the transport's saved features already say it.
	Indirect bool
	mem      Memory
	max      uint16 // the device's largest queue size
	desc     []byte // the descriptor table, as Check found it in RAM
	// bufs holds the buffers of the chain Pop returned last: a Chain is
	// valid until the next Pop, which saves an allocation per request.
	bufs [][]byte
}

// Chain is one request: a descriptor chain's buffers, as slices of guest
// RAM, those the device reads first and then those it writes.
type Chain struct {
	Head     uint16
	Readable [][]byte
	Writable [][]byte
}

// ReadableLen and WritableLen are the chain's total lengths.
func (c Chain) ReadableLen() int { return total(c.Readable) }
func (c Chain) WritableLen() int { return total(c.Writable) }

func total(bs [][]byte) int {
	n := 0
	for _, b := range bs {
		n += len(b)
	}
	return n
}

// Check validates the queue's configuration against mem: a power-of-2
// size of at most max, and each part aligned (virtio 1.2, 2.7) and inside
// RAM. The driver sets it before it marks the queue ready.
func (q *Queue) Check(mem Memory, max uint16) error {
	n := uint64(q.Size)
	switch {
	case q.Size == 0 || q.Size&(q.Size-1) != 0 || q.Size > max:
		return Malformed("queue size %d: want a power of 2 up to %d", q.Size, max)
	case q.Desc%16 != 0 || q.Avail%2 != 0 || q.Used%4 != 0:
		return Malformed("queue parts at %#x, %#x, %#x: want descriptors 16-, avail 2- and used 4-byte aligned", q.Desc, q.Avail, q.Used)
	}
	for _, part := range []struct {
		name      string
		gpa, size uint64
	}{{"descriptor table", q.Desc, 16 * n}, {"avail ring", q.Avail, 6 + 2*n}, {"used ring", q.Used, 6 + 8*n}} {
		if _, err := mem.Slice(part.gpa, part.size); err != nil {
			return Malformed("%s at %#x (%d bytes) outside guest RAM", part.name, part.gpa, part.size)
		}
	}
	q.mem, q.max = mem, max
	q.desc, _ = mem.Slice(q.Desc, 16*n)
	return nil
}

// Pop takes the next available chain; ok is false when there is none.
// The chain's buffer lists are the queue's own, reused by the next Pop.
// A malformed chain, or an avail index that moved by more than the
// queue's size, is ErrMalformed.
func (q *Queue) Pop() (c Chain, ok bool, err error) {
	avail := q.availIdx()
	if pending := avail - q.LastAvail; pending == 0 {
		return Chain{}, false, nil
	} else if pending > q.Size {
		return Chain{}, false, Malformed("avail index %d is %d past the last taken, more than the queue's %d entries", avail, pending, q.Size)
	}
	ring, _ := q.mem.Slice(q.Avail+4+2*uint64(q.LastAvail%q.Size), 2)
	head := binary.LittleEndian.Uint16(ring)
	if c, err = q.chain(head); err != nil {
		return Chain{}, false, err
	}
	q.LastAvail++
	if q.EventIdx {
		// avail_event: notify when the driver makes this entry available.
		b, _ := q.mem.Slice(q.Used+4+8*uint64(q.Size), 2)
		binary.LittleEndian.PutUint16(b, q.LastAvail)
	}
	return c, true, nil
}

// chain walks the descriptors from head, and those of the indirect
// table its last one may point to (virtio 1.2, 2.7.5.3). An indirect
// table holds at most the device's largest queue size of descriptors,
// not the driver's: a driver that got less ring than it asked for
// (Linux halves a ring it cannot allocate) still sends requests of the
// device's seg_max, which is two below that size for a block device.
// The bound also limits what a looping table costs, as the queue's size
// does for a direct chain.
func (q *Queue) chain(head uint16) (Chain, error) {
	table, indirect := q.desc, false
	bufs := q.bufs[:0]
	readable := -1  // how many of bufs the device reads, once one it writes comes
	i, n := head, 0 // n: descriptors taken from the current table
	for {
		entries := len(table) / 16
		if int(i) >= entries {
			return Chain{}, Malformed("descriptor index %d of a %d-entry %s", i, entries, tableName(indirect))
		}
		if n == entries {
			return Chain{}, Malformed("chain from descriptor %d longer than its %d-entry %s (a loop)", head, entries, tableName(indirect))
		}
		d := table[16*int(i):]
		addr := binary.LittleEndian.Uint64(d)
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		if flags&descIndirect != 0 {
			switch {
			case !q.Indirect:
				return Chain{}, Malformed("descriptor %d is indirect, which the driver did not negotiate", i)
			case indirect:
				return Chain{}, Malformed("descriptor %d of an indirect table is itself indirect", i)
			case flags&descNext != 0:
				return Chain{}, Malformed("descriptor %d is indirect and has a next one", i)
			case length == 0 || length%16 != 0:
				return Chain{}, Malformed("descriptor %d: indirect table of %d bytes, not a whole number of 16-byte descriptors", i, length)
			case length/16 > uint32(q.max):
				return Chain{}, Malformed("descriptor %d: indirect table of %d descriptors, more than the device's %d", i, length/16, q.max)
			}
			t, err := q.mem.Slice(addr, uint64(length))
			if err != nil {
				return Chain{}, Malformed("descriptor %d: indirect table at %#x (%d bytes) outside guest RAM", i, addr, length)
			}
			table, indirect, i, n = t, true, 0, 0
			continue
		}
		buf, err := q.mem.Slice(addr, uint64(length))
		if err != nil {
			return Chain{}, Malformed("descriptor %d: buffer at %#x (%d bytes) outside guest RAM", i, addr, length)
		}
		if flags&descWrite != 0 {
			if readable < 0 {
				readable = len(bufs)
			}
		} else if readable >= 0 {
			return Chain{}, Malformed("descriptor %d: a readable buffer after a writable one", i)
		}
		bufs = append(bufs, buf)
		if flags&descNext == 0 {
			q.bufs = bufs
			if readable < 0 {
				readable = len(bufs)
			}
			return Chain{Head: head, Readable: bufs[:readable:readable], Writable: bufs[readable:]}, nil
		}
		i = next
		n++
	}
}

func tableName(indirect bool) string {
	if indirect {
		return "indirect table"
	}
	return "queue"
}

// Push returns chain head to the driver with written bytes written.
func (q *Queue) Push(head uint16, written uint32) {
	e, _ := q.mem.Slice(q.Used+4+8*uint64(q.UsedIdx%q.Size), 8)
	binary.LittleEndian.PutUint32(e, uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	q.UsedIdx++
	// flags and idx are one aligned word the device owns: one atomic
	// store publishes the index after the entry.
	w, _ := q.mem.Slice(q.Used, 4)
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&w[0])), uint32(q.UsedIdx)<<16)
}

// WantsInterrupt reports whether the driver wants an interrupt for the
// chains pushed since the used index was old: by its used_event with
// event index, else unless its avail ring says NO_INTERRUPT.
func (q *Queue) WantsInterrupt(old uint16) bool {
	if q.UsedIdx == old {
		return false
	}
	if !q.EventIdx {
		flags, _ := q.mem.Slice(q.Avail, 2)
		return binary.LittleEndian.Uint16(flags)&1 == 0 // VRING_AVAIL_F_NO_INTERRUPT
	}
	b, _ := q.mem.Slice(q.Avail+4+2*uint64(q.Size), 2)
	event := binary.LittleEndian.Uint16(b)
	// vring_need_event (virtio 1.2, 2.7.10): the driver asked to hear
	// when the used index passes event.
	return q.UsedIdx-event-1 < q.UsedIdx-old
}

// availIdx reads the driver's avail index.
func (q *Queue) availIdx() uint16 {
	b, _ := q.mem.Slice(q.Avail+2, 2)
	return binary.LittleEndian.Uint16(b)
}
