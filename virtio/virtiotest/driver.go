package virtiotest

import (
	"encoding/binary"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/virtio"
)

// Driver plays a guest's virtio-mmio driver against a transport, for
// devices' tests: it negotiates features, lays each queue out in RAM,
// offers chains and takes back those the device used.
//
// A Kicker device serves queues from goroutines of its own. The driver
// hands it a kick that runs under the driver's lock, which the driver's
// own accesses take too: the device and the test never touch RAM at once,
// and tests run clean under the race detector.
type Driver struct {
	t      testing.TB
	tr     *virtio.Transport
	kicked chan struct{} // a kick ran: used chains may have come

	mu  sync.Mutex // guards the fields below and RAM, and is held across every call into tr
	ram RAM
	qs  []driverQueue
	irq bool
}

// driverQueue is where queue i lies in RAM and what the driver has put in it.
type driverQueue struct {
	size              uint16
	desc, avail, used uint64
	bufs              uint64   // each descriptor's buffer: SlotSize bytes from bufs+SlotSize*index
	free              []uint16 // descriptors not in an offered chain
	chains            map[uint16]chain
	availIdx, usedIdx uint16 // next avail entry to fill, next used entry to take
}

// chain is an offered chain's descriptors, and which of them are writable.
type chain struct {
	descs    []uint16
	writable []bool
}

// Used is a chain the device returned: its head, the length the device
// wrote, and what it wrote: the writable buffers, joined, up to Len.
type Used struct {
	Head uint16
	Len  uint32
	Data []byte
}

// SlotSize is the most one buffer of a chain holds.
const SlotSize = 0x11000

// ringsSize is the room each queue's three parts take: descriptors at 0,
// the avail ring at 4 KiB, the used ring at 6 KiB (256 entries at most).
const ringsSize = 0x2000

// NewDriver puts dev behind a transport on fresh RAM with room for every
// queue at size entries (at most 256).
func NewDriver(t testing.TB, dev virtio.Device, size uint16, log *slog.Logger) *Driver {
	t.Helper()
	n := uint64(len(dev.QueueSizes()))
	if size == 0 || size > 256 {
		t.Fatalf("queue size %d: want 1 to 256", size)
	}
	d := &Driver{t: t, kicked: make(chan struct{}, 1), ram: make(RAM, n*ringsSize+n*uint64(size)*SlotSize)}
	for i := range n {
		q := driverQueue{size: size, desc: i * ringsSize, avail: i*ringsSize + 0x1000, used: i*ringsSize + 0x1800,
			bufs: n*ringsSize + i*uint64(size)*SlotSize, chains: map[uint16]chain{}}
		for j := range size {
			q.free = append(q.free, j)
		}
		d.qs = append(d.qs, q)
	}
	var wrapped virtio.Device = dev
	if k, ok := dev.(virtio.Kicker); ok {
		wrapped = kicker{dev, k, d}
	}
	d.tr = virtio.NewTransport("test", wrapped, d.ram, func(l bool) { d.irq = l }, nil, log)
	return d
}

// kicker is a Kicker device whose kicks take the driver's lock.
type kicker struct {
	virtio.Device
	k virtio.Kicker
	d *Driver
}

func (k kicker) SetKick(kick func(q int)) {
	k.k.SetKick(func(q int) {
		k.d.mu.Lock()
		kick(q)
		k.d.mu.Unlock()
		select {
		case k.d.kicked <- struct{}{}:
		default:
		}
	})
}

// Transport is the transport the driver drives.
func (d *Driver) Transport() *virtio.Transport { return d.tr }

// Register offsets and status bits, as a driver knows them (virtio 1.2,
// 4.2.2, 2.1).
const (
	rDevFeat, rDevFeatSel, rDrvFeat, rDrvSel = 0x010, 0x014, 0x020, 0x024
	rQueueSel, rQueueNum, rQueueReady        = 0x030, 0x038, 0x044
	rQueueNotify, rStatus                    = 0x050, 0x070
	rDescLo, rAvailLo, rUsedLo               = 0x080, 0x090, 0x0a0
	stAck, stDriver, stDriverOK, stFeatOK    = 1, 2, 4, 8
)

func (d *Driver) read(off uint64) uint32 {
	b := make([]byte, 4)
	d.tr.Read(off, b)
	return binary.LittleEndian.Uint32(b)
}

func (d *Driver) write(off uint64, v uint32) {
	d.tr.Write(off, binary.LittleEndian.AppendUint32(nil, v))
}

// Setup negotiates the features the device offers, masked by mask, and
// makes every queue live; the test fails if the device refuses.
func (d *Driver) Setup(mask uint64) {
	d.t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
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
	d.write(rStatus, stAck|stDriver|stFeatOK)
	if d.read(rStatus)&stFeatOK == 0 {
		d.t.Fatalf("features %#x refused", f)
	}
	for i, q := range d.qs {
		d.write(rQueueSel, uint32(i))
		d.write(rQueueNum, uint32(q.size))
		d.write(rDescLo, uint32(q.desc))
		d.write(rAvailLo, uint32(q.avail))
		d.write(rUsedLo, uint32(q.used))
		d.write(rQueueReady, 1)
	}
	d.write(rStatus, stAck|stDriver|stFeatOK|stDriverOK)
}

// Config reads n bytes of the device's configuration space at off.
func (d *Driver) Config(off uint64, n int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := make([]byte, n)
	d.tr.Read(virtio.ConfigOffset+off, b)
	return b
}

// Offer makes a chain available on queue q, device-readable buffers
// holding readable, then device-writable ones of the lengths writable,
// and notifies the device.
func (d *Driver) Offer(q int, readable [][]byte, writable ...int) {
	d.t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	dq := &d.qs[q]
	n := len(readable) + len(writable)
	if n == 0 || n > len(dq.free) {
		d.t.Fatalf("queue %d: a chain of %d buffers, %d descriptors free", q, n, len(dq.free))
	}
	var c chain
	for i := range n {
		idx := dq.free[0]
		dq.free = dq.free[1:]
		addr := dq.bufs + SlotSize*uint64(idx)
		w := i >= len(readable)
		var length int
		var flags uint16
		if w {
			length, flags = writable[i-len(readable)], 2 // VIRTQ_DESC_F_WRITE
		} else {
			length = len(readable[i])
		}
		if length > SlotSize {
			d.t.Fatalf("a buffer of %d bytes, more than %d", length, SlotSize)
		}
		if !w {
			copy(d.ram[addr:], readable[i])
		}
		c.writable = append(c.writable, w)
		if i+1 < n {
			flags |= 1 // VIRTQ_DESC_F_NEXT
		}
		c.descs = append(c.descs, idx)
		e := d.ram[dq.desc+16*uint64(idx):]
		binary.LittleEndian.PutUint64(e, addr)
		binary.LittleEndian.PutUint32(e[8:], uint32(length))
		binary.LittleEndian.PutUint16(e[12:], flags)
		if i > 0 {
			binary.LittleEndian.PutUint16(d.ram[dq.desc+16*uint64(c.descs[i-1])+14:], idx)
		}
	}
	dq.chains[c.descs[0]] = c
	binary.LittleEndian.PutUint16(d.ram[dq.avail+4+2*uint64(dq.availIdx%dq.size):], c.descs[0])
	dq.availIdx++
	binary.LittleEndian.PutUint16(d.ram[dq.avail+2:], dq.availIdx)
	d.write(rQueueNotify, uint32(q))
}

// Take returns the chains queue q's device used since the last Take, and
// frees their descriptors.
func (d *Driver) Take(q int) []Used {
	d.mu.Lock()
	defer d.mu.Unlock()
	dq := &d.qs[q]
	idx := binary.LittleEndian.Uint16(d.ram[dq.used+2:])
	var out []Used
	for ; dq.usedIdx != idx; dq.usedIdx++ {
		e := d.ram[dq.used+4+8*uint64(dq.usedIdx%dq.size):]
		u := Used{Head: uint16(binary.LittleEndian.Uint32(e)), Len: binary.LittleEndian.Uint32(e[4:])}
		c, ok := dq.chains[u.Head]
		if !ok {
			d.t.Errorf("queue %d: the device used chain %d, which is not offered", q, u.Head)
			continue
		}
		delete(dq.chains, u.Head)
		u.Data = []byte{}
		for i, idx := range c.descs {
			dq.free = append(dq.free, idx)
			if !c.writable[i] {
				continue
			}
			b := d.ram[dq.desc+16*uint64(idx):]
			addr, n := binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint32(b[8:])
			u.Data = append(u.Data, d.ram[addr:addr+uint64(n)]...)
		}
		if int(u.Len) > len(u.Data) {
			d.t.Errorf("queue %d: the device wrote %d bytes into %d", q, u.Len, len(u.Data))
		}
		u.Data = u.Data[:min(int(u.Len), len(u.Data))]
		out = append(out, u)
	}
	return out
}

// Await waits up to timeout for queue q's device to use a chain, and
// returns those it used; none when the time ran out.
func (d *Driver) Await(q int, timeout time.Duration) []Used {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if u := d.Take(q); len(u) > 0 {
			return u
		}
		select {
		case <-d.kicked:
		case <-deadline.C:
			return nil
		}
	}
}

// IRQ is the level of the device's interrupt line.
func (d *Driver) IRQ() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.irq
}
