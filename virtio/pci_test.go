package virtio_test

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"reflect"
	"strings"
	"testing"

	"github.com/sfvmm/sfvmm/virtio"
	"github.com/sfvmm/sfvmm/virtio/rng"
	"github.com/sfvmm/sfvmm/virtio/virtiotest"
	"github.com/sfvmm/sfvmm/vmm/devices/devtest"
)

const pciBAR = 0xe000_0000

// msi is an MSI-X message the transport sent.
type msi struct {
	addr uint64
	data uint32
}

// pciDriver plays Linux's virtio-pci driver (virtio_pci_modern) against
// a transport: it finds the structures through the capability list, as
// the driver does, and gives each vector the message 0x30+vector.
type pciDriver struct {
	t    *testing.T
	mem  virtiotest.RAM
	tr   *virtio.PCITransport
	sent []msi
	logs *bytes.Buffer
	// Where the capabilities put the structures in the BAR.
	common, isr, device, notify, mult uint32
	msixCap                           uint64
	next, idx                         uint16
}

func newPCIDriver(t *testing.T, dev virtio.Device) *pciDriver {
	t.Helper()
	d := &pciDriver{t: t, mem: make(virtiotest.RAM, ramSize), logs: &bytes.Buffer{}}
	var err error
	d.tr, err = virtio.NewPCITransport("test", dev, d.mem, pciBAR, func(a uint64, v uint32) { d.sent = append(d.sent, msi{a, v}) },
		nil, slog.New(slog.NewTextHandler(d.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *pciDriver) cfg(off uint64, n int) uint64 {
	b := make([]byte, n)
	d.tr.ConfigRead(off, b)
	return devtest.Value(b)
}

func (d *pciDriver) setCfg(off uint64, n int, v uint64) { d.tr.ConfigWrite(off, devtest.Bytes(v, n)) }

// rd and wr access the BAR at off with n bytes.
func (d *pciDriver) rd(off uint64, n int) uint64 {
	b := make([]byte, n)
	d.tr.Read(off, b)
	return devtest.Value(b)
}

func (d *pciDriver) wr(off uint64, n int, v uint64) { d.tr.Write(off, devtest.Bytes(v, n)) }

// Common configuration offsets (virtio 1.2, 4.1.4.3).
const (
	cDevFeatSel, cDevFeat, cDrvFeatSel, cDrvFeat = 0x00, 0x04, 0x08, 0x0c
	cConfigVector, cNumQueues, cStatus           = 0x10, 0x12, 0x14
	cQueueSel, cQueueSize, cQueueVector          = 0x16, 0x18, 0x1a
	cQueueEnable, cQueueNotifyOff                = 0x1c, 0x1e
	cQueueDesc, cQueueDriver, cQueueDevice       = 0x20, 0x28, 0x30
)

// probe enables decoding, walks the capability list and sets up MSI-X
// with every vector unmasked.
func (d *pciDriver) probe() {
	d.t.Helper()
	if id := d.cfg(0, 4); id != 0x1044_1af4 {
		d.t.Fatalf("vendor/device %#x, want 1af4:1044 (entropy)", id)
	}
	d.setCfg(4, 2, 6) // memory, bus master
	for pos := d.cfg(0x34, 1); pos != 0; pos = d.cfg(pos+1, 1) {
		switch d.cfg(pos, 1) {
		case 0x09:
			typ, bar, off, n := d.cfg(pos+3, 1), d.cfg(pos+4, 1), uint32(d.cfg(pos+8, 4)), uint32(d.cfg(pos+12, 4))
			if bar != 0 || off+n > virtio.PCIBARSize {
				d.t.Fatalf("capability type %d: BAR %d [%#x, +%#x)", typ, bar, off, n)
			}
			switch typ {
			case 1:
				d.common = off
			case 2:
				d.notify, d.mult = off, uint32(d.cfg(pos+16, 4))
			case 3:
				d.isr = off
			case 4:
				d.device = off
			}
		case 0x11:
			d.msixCap = pos
		}
	}
	if d.notify == 0 || d.isr == 0 || d.device == 0 || d.msixCap == 0 || d.mult == 0 {
		d.t.Fatalf("capabilities missing: notify %#x isr %#x device %#x msi-x %#x", d.notify, d.isr, d.device, d.msixCap)
	}
	n := d.cfg(d.msixCap+2, 2)&0x7ff + 1
	table := d.cfg(d.msixCap+4, 4)
	for v := range n {
		e := table + 16*v
		d.wr(e, 4, 0xfee0_0000)
		d.wr(e+4, 4, 0)
		d.wr(e+8, 4, 0x30+v)
		d.wr(e+12, 4, 0)
	}
	d.setCfg(d.msixCap+2, 2, 0x8000)
}

func (d *pciDriver) c(off uint64) uint64 { return uint64(d.common) + off }

// setup negotiates the device's features, configures queue 0 at the
// test's addresses with vector 1 and configuration changes on vector 0.
func (d *pciDriver) setup() {
	d.t.Helper()
	d.wr(d.c(cStatus), 1, stAck)
	d.wr(d.c(cStatus), 1, stAck|stDriver)
	var f uint64
	for sel := range uint64(2) {
		d.wr(d.c(cDevFeatSel), 4, sel)
		f |= d.rd(d.c(cDevFeat), 4) << (32 * sel)
	}
	for sel := range uint64(2) {
		d.wr(d.c(cDrvFeatSel), 4, sel)
		d.wr(d.c(cDrvFeat), 4, f>>(32*sel)&0xffffffff)
	}
	d.wr(d.c(cStatus), 1, stAck|stDriver|stFeaturesOK)
	if d.rd(d.c(cStatus), 1)&stFeaturesOK == 0 {
		d.t.Fatalf("features %#x refused", f)
	}
	d.wr(d.c(cConfigVector), 2, 0)
	d.wr(d.c(cQueueSel), 2, 0)
	d.wr(d.c(cQueueSize), 2, qsize)
	d.wr(d.c(cQueueDesc), 4, descAt)
	d.wr(d.c(cQueueDesc+4), 4, 0)
	d.wr(d.c(cQueueDriver), 8, availAt)
	d.wr(d.c(cQueueDevice), 4, usedAt)
	d.wr(d.c(cQueueDevice+4), 4, 0)
	d.wr(d.c(cQueueVector), 2, 1)
	if v := d.rd(d.c(cQueueVector), 2); v != 1 {
		d.t.Fatalf("queue vector reads %#x, want 1", v)
	}
	d.wr(d.c(cQueueEnable), 2, 1)
	d.wr(d.c(cStatus), 1, stAck|stDriver|stFeaturesOK|stDriverOK)
}

// offer makes a chain of one writable buffer of n bytes available and
// notifies queue 0 at its own address.
func (d *pciDriver) offer(n uint32) {
	b := d.mem[descAt+16*uint64(d.next):]
	binary.LittleEndian.PutUint64(b, bufAt)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint16(b[12:], 2)
	binary.LittleEndian.PutUint16(d.mem[availAt+4+2*uint64(d.idx%qsize):], d.next)
	d.next = (d.next + 1) % qsize
	d.idx++
	binary.LittleEndian.PutUint16(d.mem[availAt+2:], d.idx)
	d.wr(uint64(d.notify)+uint64(d.rd(d.c(cQueueNotifyOff), 2))*uint64(d.mult), 2, 0)
}

func (d *pciDriver) usedIdx() uint16 { return binary.LittleEndian.Uint16(d.mem[usedAt+2:]) }

// Linux's driver finds the device, negotiates, sets up a queue with its
// own vector, and a request comes back with that vector's message: no
// register read on the way (the ISR stays clear under MSI-X).
func TestPCIEntropy(t *testing.T) {
	d := newPCIDriver(t, rng.Device{})
	d.probe()
	d.setup()
	if n := d.rd(d.c(cNumQueues), 2); n != 1 {
		t.Errorf("num_queues %d, want 1", n)
	}
	d.offer(32)
	if d.usedIdx() != 1 || !reflect.DeepEqual(d.sent, []msi{{0xfee0_0000, 0x31}}) {
		t.Fatalf("used idx %d, messages %v; want 1 and vector 1's", d.usedIdx(), d.sent)
	}
	if d.mem[bufAt] == 0 && bytes.Equal(d.mem[bufAt:bufAt+32], make([]byte, 32)) {
		t.Error("no entropy written")
	}
	if isr := d.rd(uint64(d.isr), 1); isr != 0 {
		t.Errorf("ISR %#x under MSI-X, want 0", isr)
	}
	// A vector the table does not have reads back as NO_VECTOR.
	d.wr(d.c(cConfigVector), 2, 9)
	if v := d.rd(d.c(cConfigVector), 2); v != virtio.NoVector {
		t.Errorf("config vector %#x after writing 9, want NO_VECTOR", v)
	}
}

// A queue outside RAM fails the device: DEVICE_NEEDS_RESET, one log line,
// a configuration change on its vector; a reset brings it back with its
// queues at their largest size and no vectors.
func TestPCIMalformedQueue(t *testing.T) {
	d := newPCIDriver(t, rng.Device{})
	d.probe()
	d.wr(d.c(cStatus), 1, stAck|stDriver)
	d.wr(d.c(cDrvFeatSel), 4, 1)
	d.wr(d.c(cDrvFeat), 4, 1) // VERSION_1
	d.wr(d.c(cStatus), 1, stAck|stDriver|stFeaturesOK)
	d.wr(d.c(cConfigVector), 2, 0)
	d.wr(d.c(cQueueDesc), 8, ramSize)
	d.wr(d.c(cQueueEnable), 2, 1)
	if s := d.rd(d.c(cStatus), 1); s&0x40 == 0 {
		t.Fatalf("status %#x, want DEVICE_NEEDS_RESET", s)
	}
	if !reflect.DeepEqual(d.sent, []msi{{0xfee0_0000, 0x30}}) || d.rd(uint64(d.isr), 1) != 2 {
		t.Errorf("messages %v, want the configuration vector's; ISR should say configuration change", d.sent)
	}
	if n := strings.Count(d.logs.String(), "needs a reset"); n != 1 {
		t.Errorf("%d log lines, want 1:\n%s", n, d.logs)
	}
	d.wr(d.c(cStatus), 1, 0)
	if s, size, v := d.rd(d.c(cStatus), 1), d.rd(d.c(cQueueSize), 2), d.rd(d.c(cConfigVector), 2); s != 0 || size != uint64(rng.Device{}.QueueSizes()[0]) || v != virtio.NoVector {
		t.Errorf("after reset: status %#x, queue size %d, config vector %#x; want 0, the largest, NO_VECTOR", s, size, v)
	}
}

// Accesses the common configuration does not take (wrong width, inside a
// field) change nothing and read zero; with decoding off the BAR reads
// all-ones and takes no write.
func TestPCIOddAccesses(t *testing.T) {
	d := newPCIDriver(t, rng.Device{})
	d.probe()
	before, _ := d.tr.Save()
	for _, a := range []struct {
		off uint64
		n   int
	}{{cStatus, 4}, {cDevFeat + 1, 2}, {cQueueSel, 4}, {cQueueDesc + 2, 4}, {cDrvFeat, 8}, {cQueueSize, 1}, {0x3e, 2}, {0x3f, 8}} {
		d.wr(d.c(a.off), a.n, 0xffff_ffff_ffff_ffff)
		if v := d.rd(d.c(a.off), a.n); v != 0 {
			t.Errorf("read of %d bytes at %#x: %#x, want 0", a.n, a.off, v)
		}
	}
	d.wr(uint64(d.isr), 1, 0xff)
	d.wr(uint64(d.notify)+0x100, 2, 0) // no such queue
	if after, _ := d.tr.Save(); !reflect.DeepEqual(before, after) {
		t.Errorf("odd accesses changed the state:\n%+v\n%+v", before, after)
	}
	d.setCfg(4, 2, 0)
	if v := d.rd(d.c(cNumQueues), 2); v != 0xffff {
		t.Errorf("with decoding off, num_queues reads %#x", v)
	}
}

// The transport's state, PCI function and vectors included, survives
// save→restore→save; the restored device serves the next request with
// the same vector.
func TestPCIStateRoundTrip(t *testing.T) {
	d := newPCIDriver(t, rng.Device{})
	d.probe()
	d.setup()
	d.offer(16)
	d2 := newPCIDriver(t, rng.Device{})
	copy(d2.mem, d.mem)
	*d2 = pciDriver{t: t, mem: d2.mem, tr: d2.tr, logs: d2.logs, common: d.common, isr: d.isr, device: d.device,
		notify: d.notify, mult: d.mult, msixCap: d.msixCap, next: d.next, idx: d.idx}
	devtest.RoundTrip[virtio.TransportState](t, d.tr, d2.tr)
	d2.offer(16)
	if d2.usedIdx() != 2 {
		t.Errorf("used idx %d after restore, want 2", d2.usedIdx())
	}
	st, _ := d.tr.Save()
	bad := st
	bad.PCI.QueueVectors = nil
	if err := newPCIDriver(t, rng.Device{}).tr.Restore(bad); err == nil {
		t.Error("a state without queue vectors was taken")
	}
	bad = st
	bad.PCI.ConfigVector = 5
	if err := newPCIDriver(t, rng.Device{}).tr.Restore(bad); err == nil {
		t.Error("a vector past the table was taken")
	}
	// The mmio transport's state (no PCI function) is refused too.
	mmio, _ := newDriver(t, rng.Device{}).tr.Save()
	if err := newPCIDriver(t, rng.Device{}).tr.Restore(mmio); err == nil {
		t.Error("a virtio-mmio state was taken")
	}
}

// FuzzPCITransport throws the fuzzer's accesses at the BAR and the
// configuration space, then notifies: the transport never panics, every
// chain lies in RAM (the queue code's checks), and the state survives
// save→restore→save. Each access takes 8 bytes: control (bit 0 write,
// bits 1-3 width, including 0 and 3, which no bus sends, bit 4
// configuration space), a 16-bit offset, and the value's low 5 bytes.
func FuzzPCITransport(f *testing.F) {
	f.Add([]byte{
		0x13, 0x04, 0, 6, 0, 0, 0, 0, // command: memory
		0x03, 0x14, 0, 1, 0, 0, 0, 0, // status ACK
		0x05, 0x20, 0, 0, 0x10, 0, 0, 0, // queue desc
		0x03, 0x1c, 0, 1, 0, 0, 0, 0, // queue enable
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > devtest.MaxFuzzInput {
			return
		}
		d := newPCIDriver(t, rng.Device{})
		widths := [8]int{1, 2, 4, 8, 0, 3, 1, 2}
		for ; len(in) >= 8; in = in[8:] {
			n := widths[in[0]>>1&7]
			off := uint64(binary.LittleEndian.Uint16(in[1:]))
			v := devtest.Value(in[3:8])
			switch {
			case in[0]&0x10 != 0 && in[0]&1 != 0:
				d.setCfg(off%0x110, n, v)
			case in[0]&0x10 != 0:
				d.cfg(off%0x110, n)
			case in[0]&1 != 0:
				d.wr(off%(virtio.PCIBARSize+0x10), n, v)
			default:
				d.rd(off%(virtio.PCIBARSize+0x10), n)
			}
		}
		d.wr(0x3000, 2, 0)
		devtest.RoundTrip[virtio.TransportState](t, d.tr, d.tr)
	})
}
