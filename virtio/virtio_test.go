package virtio_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/sfvmm/sfvmm/virtio"
	"github.com/sfvmm/sfvmm/virtio/rng"
	"github.com/sfvmm/sfvmm/virtio/virtiotest"
)

// Where the test driver puts a queue of size qsize, and its buffers.
const (
	qsize   = 8
	descAt  = 0x1000
	availAt = 0x2000
	usedAt  = 0x3000
	bufAt   = 0x4000
	tableAt = 0x6000 // an indirect descriptor table
	ramSize = 0x10000
)

// driver plays a guest's virtio-mmio driver against a transport.
type driver struct {
	t    *testing.T
	mem  virtiotest.RAM
	tr   *virtio.Transport
	irq  bool
	logs *bytes.Buffer
	next uint16 // next free descriptor
	idx  uint16 // avail index
}

func newDriver(t *testing.T, dev virtio.Device) *driver {
	d := &driver{t: t, mem: make(virtiotest.RAM, ramSize), logs: &bytes.Buffer{}}
	d.tr = virtio.NewTransport("test", dev, d.mem, func(l bool) { d.irq = l }, nil, slog.New(slog.NewTextHandler(d.logs, nil)))
	return d
}

func (d *driver) read(off uint64) uint32 {
	b := make([]byte, 4)
	d.tr.Read(off, b)
	return binary.LittleEndian.Uint32(b)
}

func (d *driver) write(off uint64, v uint32) {
	d.tr.Write(off, binary.LittleEndian.AppendUint32(nil, v))
}

// Register offsets, as a driver knows them (virtio 1.2, 4.2.2).
const (
	rMagic, rVersion, rDeviceID               = 0x000, 0x004, 0x008
	rDevFeat, rDevFeatSel, rDrvFeat, rDrvSel  = 0x010, 0x014, 0x020, 0x024
	rQueueSel, rQueueNumMax, rQueueNum        = 0x030, 0x034, 0x038
	rQueueReady, rQueueNotify                 = 0x044, 0x050
	rIntStatus, rIntACK, rStatus              = 0x060, 0x064, 0x070
	rDescLo, rDescHi, rAvailLo, rUsedLo       = 0x080, 0x084, 0x090, 0x0a0
	stAck, stDriver, stDriverOK, stFeaturesOK = 1, 2, 4, 8
)

// setup negotiates features (those the device offers, masked) and
// configures queue 0 at the test's addresses; it reports whether the
// device took the features.
func (d *driver) setup(mask uint64, size uint32) bool {
	d.write(rStatus, stAck)
	d.write(rStatus, stAck|stDriver)
	var f uint64
	for sel := range uint32(2) {
		d.write(rDevFeatSel, sel)
		f |= uint64(d.read(rDevFeat)) << (32 * sel)
	}
	f &= mask
	for sel := range uint32(2) {
		d.write(rDrvSel, sel)
		d.write(rDrvFeat, uint32(f>>(32*sel)))
	}
	d.write(rStatus, stAck|stDriver|stFeaturesOK)
	if d.read(rStatus)&stFeaturesOK == 0 {
		return false
	}
	d.write(rQueueSel, 0)
	d.write(rQueueNum, size)
	d.write(rDescLo, descAt)
	d.write(rAvailLo, availAt)
	d.write(rUsedLo, usedAt)
	d.write(rQueueReady, 1)
	d.write(rStatus, stAck|stDriver|stFeaturesOK|stDriverOK)
	return true
}

// desc writes descriptor i of the queue, and table descriptor i of the
// indirect table at tableAt.
func (d *driver) desc(i uint16, addr uint64, n uint32, flags, next uint16) {
	putDesc(d.mem[descAt+16*uint64(i):], addr, n, flags, next)
}

func (d *driver) table(i uint16, addr uint64, n uint32, flags, next uint16) {
	putDesc(d.mem[tableAt+16*uint64(i):], addr, n, flags, next)
}

func putDesc(b []byte, addr uint64, n uint32, flags, next uint16) {
	binary.LittleEndian.PutUint64(b, addr)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

// Descriptor flags, as a driver knows them (virtio 1.2, 2.7.5).
const fNext, fWrite, fIndirect = 1, 2, 4

// offer makes head available and notifies queue 0.
func (d *driver) offer(head uint16) {
	binary.LittleEndian.PutUint16(d.mem[availAt+4+2*uint64(d.idx%qsize):], head)
	d.idx++
	binary.LittleEndian.PutUint16(d.mem[availAt+2:], d.idx)
	d.write(rQueueNotify, 0)
}

// used returns used ring entry i and the used index.
func (d *driver) used(i uint16) (id, n uint32, idx uint16) {
	e := d.mem[usedAt+4+8*uint64(i):]
	return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:]), binary.LittleEndian.Uint16(d.mem[usedAt+2:])
}

func TestRegisters(t *testing.T) {
	d := newDriver(t, rng.Device{})
	for _, c := range []struct {
		off  uint64
		want uint32
	}{{rMagic, 0x74726976}, {rVersion, 2}, {rDeviceID, rng.Type}, {rQueueNumMax, rng.QueueSize}} {
		if got := d.read(c.off); got != c.want {
			t.Errorf("register %#x: %#x, want %#x", c.off, got, c.want)
		}
	}
	d.write(rQueueSel, 1)
	if got := d.read(rQueueNumMax); got != 0 {
		t.Errorf("queue 1 of a one-queue device: max %d, want 0", got)
	}
	d.write(rDevFeatSel, 1)
	if got := d.read(rDevFeat); got&1 == 0 {
		t.Errorf("features 32-63 %#x: want VERSION_1", got)
	}
}

// An entropy request is served: random bytes in the buffer, the length in
// the used ring, an interrupt that the driver acknowledges.
func TestEntropy(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		t.Run(fmt.Sprintf("event index %v", eventIdx), func(t *testing.T) {
			d := newDriver(t, rng.Device{})
			mask := ^uint64(virtio.FeatureEventIdx)
			if eventIdx {
				mask = ^uint64(0)
			}
			if !d.setup(mask, qsize) {
				t.Fatal("features refused")
			}
			d.desc(0, bufAt, 64, 2, 0)
			d.offer(0)
			id, n, idx := d.used(0)
			if id != 0 || n != 64 || idx != 1 {
				t.Fatalf("used: id %d len %d idx %d, want 0 64 1", id, n, idx)
			}
			if bytes.Equal(d.mem[bufAt:bufAt+64], make([]byte, 64)) {
				t.Error("buffer still zero")
			}
			if !d.irq || d.read(rIntStatus) != 1 {
				t.Fatalf("irq %v, status %d: want the used-buffer interrupt", d.irq, d.read(rIntStatus))
			}
			d.write(rIntACK, 1)
			if d.irq {
				t.Error("line still high after the ACK")
			}
			if eventIdx {
				// used_event = 5: no interrupt for the next request.
				binary.LittleEndian.PutUint16(d.mem[availAt+4+2*qsize:], 5)
				d.offer(0)
				if d.irq {
					t.Error("interrupt although used_event asked for none yet")
				}
				if got := binary.LittleEndian.Uint16(d.mem[usedAt+4+8*qsize:]); got != 2 {
					t.Errorf("avail_event %d, want 2", got)
				}
			}
			if f := d.tr.Failure(); f != "" {
				t.Errorf("failed: %s", f)
			}
		})
	}
}

// A chain whose last descriptor points to an indirect table is served
// as one request: its direct buffer, then the table's, in order.
func TestIndirect(t *testing.T) {
	d := newDriver(t, rng.Device{})
	if !d.setup(^uint64(0), qsize) {
		t.Fatal("features refused")
	}
	if d.write(rDevFeatSel, 0); d.read(rDevFeat)&virtio.FeatureIndirect == 0 {
		t.Fatal("INDIRECT_DESC not offered")
	}
	d.desc(0, bufAt, 8, fWrite|fNext, 1)
	d.desc(1, tableAt, 32, fIndirect, 0)
	d.table(0, bufAt+8, 16, fWrite|fNext, 1)
	d.table(1, bufAt+24, 8, fWrite, 0)
	d.offer(0)
	if f := d.tr.Failure(); f != "" {
		t.Fatalf("failed: %s", f)
	}
	if id, n, idx := d.used(0); id != 0 || n != 32 || idx != 1 {
		t.Fatalf("used: id %d len %d idx %d, want 0 32 1", id, n, idx)
	}
	for _, r := range [][2]int{{0, 8}, {8, 24}, {24, 32}} {
		if bytes.Equal(d.mem[bufAt+r[0]:bufAt+r[1]], make([]byte, r[1]-r[0])) {
			t.Errorf("buffer bytes %d-%d still zero", r[0], r[1])
		}
	}
	if !bytes.Equal(d.mem[bufAt+32:bufAt+64], make([]byte, 32)) {
		t.Error("bytes past the chain written")
	}
	// A table longer than the driver's queue, within the device's
	// largest: a driver whose ring came out smaller than it asked still
	// sends requests of the device's size.
	const n = qsize + 4
	for i := range uint16(n) {
		d.table(i, bufAt+64+4*uint64(i), 4, fWrite|fNext, i+1)
	}
	d.table(n-1, bufAt+64+4*(n-1), 4, fWrite, 0)
	d.desc(2, tableAt, 16*n, fIndirect, 0)
	d.offer(2)
	if id, got, idx := d.used(1); id != 2 || got != 4*n || idx != 2 {
		t.Fatalf("used: id %d len %d idx %d, want 2 %d 2 (failure %q)", id, got, idx, 4*n, d.tr.Failure())
	}
}

// What a hostile driver can put in a queue: each case fails the device
// with one log line saying what is wrong; the transport survives, serves
// nothing more, and works again after a reset.
func TestMalformedQueues(t *testing.T) {
	for _, c := range []struct {
		name   string
		size   uint32
		build  func(d *driver)
		want   string
		refuse uint64 // features the driver does not take
	}{
		{"buffer outside RAM", qsize, func(d *driver) { d.desc(0, ramSize-16, 64, 2, 0); d.offer(0) }, "outside guest RAM", 0},
		{"address wraps", qsize, func(d *driver) { d.desc(0, ^uint64(0)-8, 64, 2, 0); d.offer(0) }, "outside guest RAM", 0},
		{"oversized length", qsize, func(d *driver) { d.desc(0, bufAt, 0xffffffff, 2, 0); d.offer(0) }, "outside guest RAM", 0},
		{"loop", qsize, func(d *driver) { d.desc(0, bufAt, 8, 3, 1); d.desc(1, bufAt, 8, 3, 0); d.offer(0) }, "a loop", 0},
		{"chain longer than the queue", qsize, func(d *driver) {
			for i := range uint16(qsize) {
				d.desc(i, bufAt, 8, 3, i+1)
			}
			d.offer(0)
		}, "descriptor index 8", 0},
		{"head index past the queue", qsize, func(d *driver) { d.offer(qsize + 3) }, "descriptor index 11", 0},
		{"avail index jumps", qsize, func(d *driver) {
			binary.LittleEndian.PutUint16(d.mem[availAt+2:], 100)
			d.write(rQueueNotify, 0)
		}, "avail index 100", 0},
		{"indirect descriptor not negotiated", qsize, func(d *driver) { d.desc(0, tableAt, 16, fIndirect, 0); d.offer(0) }, "did not negotiate", virtio.FeatureIndirect},
		{"indirect table in an indirect table", qsize, func(d *driver) {
			d.desc(0, tableAt, 32, fIndirect, 0)
			d.table(0, tableAt, 16, fIndirect, 0)
			d.offer(0)
		}, "itself indirect", 0},
		{"indirect descriptor with a next", qsize, func(d *driver) {
			d.desc(0, tableAt, 16, fIndirect|fNext, 1)
			d.desc(1, bufAt, 8, fWrite, 0)
			d.offer(0)
		}, "has a next", 0},
		{"indirect table of a part descriptor", qsize, func(d *driver) { d.desc(0, tableAt, 24, fIndirect, 0); d.offer(0) }, "not a whole number", 0},
		{"empty indirect table", qsize, func(d *driver) { d.desc(0, tableAt, 0, fIndirect, 0); d.offer(0) }, "not a whole number", 0},
		{"indirect table larger than the device's queues", qsize, func(d *driver) { d.desc(0, tableAt, 16*(rng.QueueSize+1), fIndirect, 0); d.offer(0) }, "more than the device's 64", 0},
		{"indirect table outside RAM", qsize, func(d *driver) { d.desc(0, ramSize-16, 32, fIndirect, 0); d.offer(0) }, "indirect table at", 0},
		{"loop in an indirect table", qsize, func(d *driver) {
			d.desc(0, tableAt, 32, fIndirect, 0)
			d.table(0, bufAt, 8, fWrite|fNext, 1)
			d.table(1, bufAt, 8, fWrite|fNext, 0)
			d.offer(0)
		}, "2-entry indirect table (a loop)", 0},
		{"index past an indirect table", qsize, func(d *driver) {
			d.desc(0, tableAt, 32, fIndirect, 0)
			d.table(0, bufAt, 8, fWrite|fNext, 5)
			d.offer(0)
		}, "descriptor index 5 of a 2-entry indirect table", 0},
		{"indirect buffer outside RAM", qsize, func(d *driver) {
			d.desc(0, tableAt, 16, fIndirect, 0)
			d.table(0, ramSize-8, 64, fWrite, 0)
			d.offer(0)
		}, "outside guest RAM", 0},
		{"readable after writable", qsize, func(d *driver) { d.desc(0, bufAt, 8, 3, 1); d.desc(1, bufAt, 8, 0, 0); d.offer(0) }, "readable buffer after a writable", 0},
		{"entropy request with a readable buffer", qsize, func(d *driver) { d.desc(0, bufAt, 8, 0, 0); d.offer(0) }, "device-readable", 0},
		{"queue size not a power of 2", 6, func(*driver) {}, "queue size 6", 0},
		{"queue larger than the device's", 128, func(*driver) {}, "queue size 128", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := newDriver(t, rng.Device{})
			d.setup(^c.refuse, c.size)
			c.build(d)
			f := d.tr.Failure()
			if !strings.Contains(f, c.want) {
				t.Fatalf("failure %q, want it to say %q", f, c.want)
			}
			if d.read(rStatus)&0x40 == 0 || d.read(rIntStatus)&2 == 0 {
				t.Errorf("status %#x, interrupt status %#x: want DEVICE_NEEDS_RESET and a configuration interrupt", d.read(rStatus), d.read(rIntStatus))
			}
			if n := strings.Count(d.logs.String(), "\n"); n != 1 {
				t.Errorf("%d log lines, want 1:\n%s", n, d.logs)
			}
			// Nothing more is served until a reset; then all is well.
			d.desc(0, bufAt, 64, 2, 0)
			d.offer(0)
			if f2 := d.tr.Failure(); f2 != f {
				t.Errorf("failure changed to %q", f2)
			}
			d.write(rStatus, 0)
			if d.read(rStatus) != 0 || d.tr.Failure() != "" || d.irq {
				t.Fatalf("after reset: status %#x, failure %q, irq %v", d.read(rStatus), d.tr.Failure(), d.irq)
			}
			clear(d.mem)
			d.idx = 0
			if !d.setup(^uint64(0), qsize) {
				t.Fatal("features refused after reset")
			}
			d.desc(0, bufAt, 64, 2, 0)
			d.offer(0)
			if _, n, idx := d.used(0); n != 64 || idx != 1 {
				t.Errorf("after reset: used len %d idx %d, want 64 1", n, idx)
			}
		})
	}
}

// Feature negotiation: a driver that takes features the device does not
// offer, or not VERSION_1, does not get FEATURES_OK; DRIVER_OK without it
// fails the device.
func TestFeatureNegotiation(t *testing.T) {
	d := newDriver(t, rng.Device{})
	if d.setup(^uint64(virtio.FeatureVersion1), qsize) {
		t.Error("FEATURES_OK without VERSION_1")
	}
	d.write(rStatus, 0)
	d.write(rStatus, stAck|stDriver)
	d.write(rDrvSel, 0)
	d.write(rDrvFeat, 1<<5) // not offered
	d.write(rDrvSel, 1)
	d.write(rDrvFeat, 1)
	d.write(rStatus, stAck|stDriver|stFeaturesOK)
	if d.read(rStatus)&stFeaturesOK != 0 {
		t.Error("FEATURES_OK with a feature the device does not offer")
	}
	d.write(rStatus, stAck|stDriver|stDriverOK)
	if !strings.Contains(d.tr.Failure(), "DRIVER_OK without FEATURES_OK") {
		t.Errorf("failure %q", d.tr.Failure())
	}
}

// The transport's state round-trips: a restored transport serves the
// next request where the saved one stopped.
func TestStateRoundTrip(t *testing.T) {
	d := newDriver(t, rng.Device{})
	d.setup(^uint64(0), qsize)
	d.desc(0, bufAt, 32, 2, 0)
	d.offer(0)
	st, err := d.tr.Save()
	if err != nil {
		t.Fatal(err)
	}
	d2 := newDriver(t, rng.Device{})
	copy(d2.mem, d.mem)
	d2.idx = d.idx
	if err := d2.tr.Restore(st); err != nil {
		t.Fatal(err)
	}
	st2, _ := d2.tr.Save()
	if !reflect.DeepEqual(st, st2) {
		t.Fatalf("state changed in the round trip:\n%+v\n%+v", st, st2)
	}
	if !d2.irq {
		t.Error("pending interrupt not raised again after restore")
	}
	d2.offer(0)
	if _, n, idx := d2.used(1); n != 32 || idx != 2 {
		t.Errorf("after restore: used len %d idx %d, want 32 2", n, idx)
	}
	bad := st
	bad.Queues = append([]virtio.QueueState(nil), st.Queues...)
	bad.Queues[0].Used = ramSize
	if err := newDriver(t, rng.Device{}).tr.Restore(bad); !errors.Is(err, virtio.ErrMalformed) {
		t.Errorf("restore of a queue outside RAM: %v", err)
	}
}

// A request the driver made available, whose notification the saved
// device never saw (in flight through an ioeventfd), is served by the
// restored device (ServeAvailable) without another notification.
func TestRestoreServesInFlight(t *testing.T) {
	d := newDriver(t, rng.Device{})
	d.setup(^uint64(0), qsize)
	d.desc(0, bufAt, 32, 2, 0)
	binary.LittleEndian.PutUint16(d.mem[availAt+4:], 0)
	binary.LittleEndian.PutUint16(d.mem[availAt+2:], 1) // available, not notified
	st, err := d.tr.Save()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, idx := d.used(0); idx != 0 {
		t.Fatalf("served before the save without a notification: used idx %d", idx)
	}
	d2 := newDriver(t, rng.Device{})
	copy(d2.mem, d.mem)
	if err := d2.tr.Restore(st); err != nil {
		t.Fatal(err)
	}
	d2.tr.ServeAvailable()
	if id, n, idx := d2.used(0); id != 0 || n != 32 || idx != 1 || !d2.irq {
		t.Errorf("after restore: used id %d len %d idx %d irq %v, want 0 32 1 true", id, n, idx, d2.irq)
	}
}

// held is a one-queue device with work of its own, as vsock's RX: it
// fills a buffer with bytes put to it, and leaves buffers available while
// it has none.
type held struct {
	mu      sync.Mutex
	pending []byte
	kick    func(q int)
}

func (*held) Type() uint32            { return 99 }
func (*held) Features() uint64        { return 0 }
func (*held) QueueSizes() []uint16    { return []uint16{qsize} }
func (*held) Config() []byte          { return nil }
func (h *held) SetKick(k func(q int)) { h.kick = k }

func (h *held) Handle(_ int, c virtio.Chain) (uint32, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.pending) == 0 {
		return 0, virtio.ErrNotNow
	}
	n := copy(c.Writable[0], h.pending)
	h.pending = h.pending[n:]
	return uint32(n), nil
}

// put gives the device bytes, and has the transport serve its queue.
func (h *held) put(s string) {
	h.mu.Lock()
	h.pending = append(h.pending, s...)
	h.mu.Unlock()
	h.kick(0)
}

// A device that has nothing for a buffer leaves it available, in the
// saved state too, and has it served when it has: the buffers come back
// in order, with an interrupt, and the driver was not asked to notify for
// buffers behind a held one.
func TestHeldBuffers(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		t.Run(fmt.Sprintf("event index %v", eventIdx), func(t *testing.T) {
			dev := &held{}
			d := newDriver(t, dev)
			mask := ^uint64(virtio.FeatureEventIdx)
			if eventIdx {
				mask = ^uint64(0)
			}
			if !d.setup(mask, qsize) {
				t.Fatal("features refused")
			}
			dev.put("") // nothing yet: a kick on an empty queue
			d.desc(0, bufAt, 64, 2, 0)
			d.offer(0)
			d.desc(1, bufAt+64, 64, 2, 0)
			d.offer(1)
			if _, _, idx := d.used(0); idx != 0 || d.irq {
				t.Fatalf("used index %d, irq %v with nothing to send: want 0, false", idx, d.irq)
			}
			st, _ := d.tr.Save()
			if q := st.Queues[0]; q.LastAvail != 0 {
				t.Errorf("saved last avail %d, want 0: the held buffer available", q.LastAvail)
			}
			if got := binary.LittleEndian.Uint16(d.mem[usedAt+4+8*qsize:]); eventIdx && got != 0 {
				t.Errorf("avail_event %d, want 0: no notifications behind the held buffer", got)
			}

			dev.put("hello")
			if id, n, idx := d.used(0); id != 0 || n != 5 || idx != 1 {
				t.Fatalf("after put: used id %d len %d idx %d, want 0 5 1", id, n, idx)
			}
			if got := string(d.mem[bufAt : bufAt+5]); got != "hello" || !d.irq {
				t.Errorf("buffer %q, irq %v: want hello and an interrupt", got, d.irq)
			}
			dev.put("world!")
			if id, n, idx := d.used(1); id != 1 || n != 6 || idx != 2 {
				t.Fatalf("second put: used id %d len %d idx %d, want 1 6 2", id, n, idx)
			}
			if f := d.tr.Failure(); f != "" {
				t.Errorf("failed: %s", f)
			}
		})
	}
}

// A held buffer survives save and restore, and a kick before the driver
// is ready serves nothing.
func TestHeldBufferRestore(t *testing.T) {
	dev := &held{}
	d := newDriver(t, dev)
	dev.put("early")
	if got := d.tr.Failure(); got != "" || d.irq {
		t.Fatalf("a kick before setup: failure %q, irq %v", got, d.irq)
	}
	dev.pending = nil
	d.setup(^uint64(0), qsize)
	d.desc(0, bufAt, 64, 2, 0)
	d.offer(0)
	st, err := d.tr.Save()
	if err != nil {
		t.Fatal(err)
	}
	dev2 := &held{}
	d2 := newDriver(t, dev2)
	copy(d2.mem, d.mem)
	if err := d2.tr.Restore(st); err != nil {
		t.Fatal(err)
	}
	dev2.put("after")
	if id, n, idx := d2.used(0); id != 0 || n != 5 || idx != 1 || string(d2.mem[bufAt:bufAt+5]) != "after" {
		t.Errorf("restored: used id %d len %d idx %d, buffer %q; want 0 5 1 after", id, n, idx, d2.mem[bufAt:bufAt+5])
	}
}

// FuzzQueue drives a queue whose descriptor table and avail ring are the
// fuzzer's: every chain taken lies inside RAM, nothing panics, and Pop
// either serves or refuses within the queue's size.
func FuzzQueue(f *testing.F) {
	seed := make([]byte, 16*qsize+4+2*qsize)
	binary.LittleEndian.PutUint64(seed, bufAt)
	binary.LittleEndian.PutUint32(seed[8:], 64)
	binary.LittleEndian.PutUint16(seed[12:], 2)
	binary.LittleEndian.PutUint16(seed[16*qsize+2:], 1)
	f.Add(seed)
	// Descriptor 0 points to an indirect table of the next two, which
	// chain two writable buffers.
	indirect := make([]byte, 16*qsize+4+2*qsize)
	putDesc(indirect, descAt+16, 32, fIndirect, 0)
	putDesc(indirect[16:], bufAt, 64, fWrite|fNext, 1)
	putDesc(indirect[32:], bufAt+64, 64, fWrite, 0)
	binary.LittleEndian.PutUint16(indirect[16*qsize+2:], 1)
	f.Add(indirect)
	f.Add(make([]byte, 16*qsize+4+2*qsize))
	f.Fuzz(func(t *testing.T, in []byte) {
		mem := make(virtiotest.RAM, ramSize)
		n := copy(mem[descAt:descAt+16*qsize], in)
		copy(mem[availAt:availAt+4+2*qsize], in[n:])
		q := virtio.Queue{QueueState: virtio.QueueState{Size: qsize, Desc: descAt, Avail: availAt, Used: usedAt, EventIdx: len(in)%2 == 0}, Indirect: len(in)%3 != 0}
		if err := q.Check(mem, qsize); err != nil {
			t.Fatal(err)
		}
		for range qsize + 1 {
			c, ok, err := q.Pop()
			if err != nil {
				if !errors.Is(err, virtio.ErrMalformed) {
					t.Fatalf("error not ErrMalformed: %v", err)
				}
				return
			}
			if !ok {
				return
			}
			for _, b := range append(c.Readable, c.Writable...) {
				if len(b) > 0 && mem.Offset(b) < 0 {
					t.Fatal("a chain buffer outside RAM")
				}
			}
			q.Push(c.Head, uint32(c.WritableLen()))
		}
		t.Fatal("more chains than the queue holds")
	})
}

// FuzzTransport writes the fuzzer's values to the fuzzer's registers
// (then notifies): the transport never panics, whatever the order.
func FuzzTransport(f *testing.F) {
	f.Add([]byte{0x70, 0, 1, 0, 0, 0, 0x70, 0, 3, 0, 0, 0, 0x38, 0, 8, 0, 0, 0, 0x44, 0, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		d := newDriver(t, rng.Device{})
		for i := 0; i+6 <= len(in); i += 6 {
			off := uint64(binary.LittleEndian.Uint16(in[i:])) % 0x200
			d.write(off, binary.LittleEndian.Uint32(in[i+2:]))
			d.read(off)
		}
		for q := range uint32(2) {
			d.write(rQueueNotify, q)
		}
	})
}
