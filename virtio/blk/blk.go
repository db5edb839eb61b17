// Package blk is virtio-blk (virtio 1.2, 5.2): a disk the guest reads,
// writes, flushes and discards through one request queue. What holds the
// data, and how a fork freezes it, is the Backend's (package vmm/disk).
//
// A request is served whole, by the thread that took its queue's
// notification (a vCPU's, in its exit, or the queue's ioeventfd
// goroutine), before the chain goes back; a hold of the machine (a fork,
// a snapshot) waits for it, as it waits for the vCPUs to stop or through
// the transport's gate. So none is half done in a saved state: each is
// either done (its chain returned, its data written) or still in the
// available ring for the restored device to take.
package blk

import (
	"encoding/binary"
	"errors"

	"github.com/sfvmm/sfvmm/virtio"
)

// Type is virtio's device ID for a block device.
const Type = 2

// Feature bits (virtio 1.2, 5.2.3).
const (
	featureSegMax   = 1 << 2
	featureRO       = 1 << 5
	featureFlush    = 1 << 9
	featureTopology = 1 << 10
	featureDiscard  = 1 << 13
)

// Request types and statuses (virtio 1.2, 5.2.6).
const (
	typeIn      = 0
	typeOut     = 1
	typeFlush   = 4
	typeGetID   = 8
	typeDiscard = 11

	statusOK     = 0
	statusIOErr  = 1
	statusUnsupp = 2
)

// QueueSize is the request queue's largest size. Its seg_max (two
// fewer) lets Linux send a whole 1 MiB request, 257 pages where the
// buffer does not start on a page, as one chain: with 256, seg_max 254
// split each such request in two.
const QueueSize = 1024

const (
	sector     = 512
	headerSize = 16 // type, reserved, sector
	idSize     = 20 // VIRTIO_BLK_ID_BYTES
	// A discard segment: sector, num_sectors, flags.
	segmentSize = 16
	// maxDiscardSegs bounds the segments of one discard request.
	maxDiscardSegs = 32
	// maxDiscardSectors bounds one segment: 1 GiB.
	maxDiscardSectors = 1 << 21
	// Blocks of 4 KiB (the overlays' unit, disk.BlockSize) are what
	// writes and discards should come in.
	physicalBlockExp = 3
)

// Backend holds the disk's data (*disk.Disk).
type Backend interface {
	// ReadVec and WriteVec move a request's buffers, one after the
	// other, from byte off on: a guest's request is a list of pages,
	// which a backend moves in one call where it can.
	ReadVec(bufs [][]byte, off int64) (int, error)
	WriteVec(bufs [][]byte, off int64) (int, error)
	Size() uint64
	ReadOnly() bool
	Flush() error
	Discard(off, n int64) error
}

// Device is a virtio block device.
type Device struct {
	disk Backend
	id   [idSize]byte
}

// New returns a block device on disk whose GET_ID answer is id (cut to
// 20 bytes).
func New(disk Backend, id string) *Device {
	d := &Device{disk: disk}
	copy(d.id[:], id)
	return d
}

func (*Device) Type() uint32 { return Type }

func (d *Device) Features() uint64 {
	f := uint64(featureSegMax | featureFlush | featureTopology)
	if d.disk.ReadOnly() {
		return f | featureRO
	}
	return f | featureDiscard
}

func (*Device) QueueSizes() []uint16 { return []uint16{QueueSize} }

// Config is virtio_blk_config up to the discard limits.
func (d *Device) Config() []byte {
	c := make([]byte, 48)
	le := binary.LittleEndian
	le.PutUint64(c[0:], d.disk.Size()/sector) // capacity
	le.PutUint32(c[12:], QueueSize-2)         // seg_max: a header and a status besides
	c[24] = physicalBlockExp                  // topology
	le.PutUint16(c[26:], 1<<physicalBlockExp) // min_io_size
	le.PutUint32(c[36:], maxDiscardSectors)
	le.PutUint32(c[40:], maxDiscardSegs)
	le.PutUint32(c[44:], 1<<physicalBlockExp) // discard_sector_alignment
	return c
}

// request is a parsed request: its header, the chain's data buffers and
// where its status byte goes.
type request struct {
	typ    uint32
	sector uint64
	// in are the buffers the device fills (type IN, GET_ID); out the
	// bytes it takes (OUT, DISCARD), both without header and status.
	in     [][]byte
	out    [][]byte
	status []byte
}

// parse splits a chain into a request. A chain that has no room for a
// header or a status, or data on the wrong side, is malformed: a driver
// that follows the spec never sends one.
func parse(c virtio.Chain) (request, error) {
	var r request
	if c.ReadableLen() < headerSize {
		return r, virtio.Malformed("block request with %d device-readable bytes, less than its %d-byte header", c.ReadableLen(), headerSize)
	}
	if c.WritableLen() < 1 {
		return r, virtio.Malformed("block request with no room for its status")
	}
	var h [headerSize]byte
	r.out = consume(c.Readable, h[:])
	r.typ = binary.LittleEndian.Uint32(h[0:])
	r.sector = binary.LittleEndian.Uint64(h[8:])
	r.in, r.status = splitLast(c.Writable)
	switch r.typ {
	case typeIn, typeGetID:
		if total(r.out) != 0 {
			return r, virtio.Malformed("block read with %d device-readable data bytes", total(r.out))
		}
	default:
		if total(r.in) != 0 {
			return r, virtio.Malformed("block request of type %d with %d device-writable data bytes", r.typ, total(r.in))
		}
	}
	return r, nil
}

// consume copies the first len(dst) bytes of bufs into dst and returns
// the rest of bufs.
func consume(bufs [][]byte, dst []byte) [][]byte {
	for len(dst) > 0 {
		n := copy(dst, bufs[0])
		dst = dst[n:]
		if bufs[0] = bufs[0][n:]; len(bufs[0]) == 0 {
			bufs = bufs[1:]
		}
	}
	return bufs
}

// splitLast splits off the last byte of bufs, which must hold one. It
// reuses bufs' array (a chain's buffer list is its request's alone), so
// that serving a request allocates nothing.
func splitLast(bufs [][]byte) (rest [][]byte, last []byte) {
	for len(bufs[len(bufs)-1]) == 0 {
		bufs = bufs[:len(bufs)-1]
	}
	l := bufs[len(bufs)-1]
	if len(l) == 1 {
		// Linux gives the status a descriptor of its own.
		return bufs[:len(bufs)-1], l
	}
	bufs[len(bufs)-1] = l[:len(l)-1]
	return bufs, l[len(l)-1:]
}

func total(bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n
}

// Handle serves one request. What the backend cannot do (a range past
// the end, a failed read, a write to a read-only disk) is the request's
// status, as on real hardware; only a chain that cannot be a request
// fails the device.
func (d *Device) Handle(_ int, c virtio.Chain) (uint32, error) {
	r, err := parse(c)
	if err != nil {
		return 0, err
	}
	written := uint32(1) // the status
	status := byte(statusOK)
	switch r.typ {
	case typeIn:
		var n int
		n, err = d.transfer(r.sector, r.in, d.disk.ReadVec)
		written += uint32(n)
	case typeOut:
		if d.disk.ReadOnly() {
			err = errIO
			break
		}
		_, err = d.transfer(r.sector, r.out, d.disk.WriteVec)
	case typeFlush:
		err = d.disk.Flush()
	case typeGetID:
		n := 0
		for _, b := range r.in {
			n += copy(b, d.id[n:])
		}
		written += uint32(n)
	case typeDiscard:
		err = d.discard(r.out)
	default:
		status = statusUnsupp
	}
	if err != nil {
		status = statusIOErr
	}
	r.status[0] = status
	return written, nil
}

// errIO is a request the disk refuses; its status says IOERR.
var errIO = errors.New("i/o error")

// transfer moves bufs to or from the disk from sector on, and returns
// the bytes moved.
func (d *Device) transfer(sec uint64, bufs [][]byte, move func([][]byte, int64) (int, error)) (int, error) {
	n := uint64(total(bufs))
	size := d.disk.Size()
	if n%sector != 0 || sec > size/sector || n > size-sec*sector {
		return 0, errIO
	}
	return move(bufs, int64(sec*sector))
}

// discard lets go of each segment of a discard request.
func (d *Device) discard(out [][]byte) error {
	if d.disk.ReadOnly() {
		return errIO
	}
	n := total(out)
	if n%segmentSize != 0 || n/segmentSize > maxDiscardSegs {
		return errIO
	}
	size := d.disk.Size() / sector
	for range n / segmentSize {
		var seg [segmentSize]byte
		out = consume(out, seg[:])
		sec := binary.LittleEndian.Uint64(seg[0:])
		num := uint64(binary.LittleEndian.Uint32(seg[8:]))
		if num > maxDiscardSectors || sec > size || num > size-sec {
			return errIO
		}
		if err := d.disk.Discard(int64(sec*sector), int64(num*sector)); err != nil {
			return err
		}
	}
	return nil
}
