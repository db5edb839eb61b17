package virtio

import (
	"encoding/binary"
	"fmt"
	"log/slog"

	"github.com/sfvmm/sfvmm/vmm/pci"
)

// Where a virtio-pci device's structures lie in its BAR, each in a page
// of its own: the common configuration, the ISR, the device's
// configuration, the queues' notification addresses (PCINotifyStride
// apart), the MSI-X table and its PBA.
const (
	pciCommon = 0x0000
	pciISR    = 0x1000
	pciDevice = 0x2000
	pciNotify = 0x3000
	pciTable  = 0x4000
	pciPBA    = 0x5000
	// PCIBARSize is the BAR's size.
	PCIBARSize = 0x8000
	// PCINotifyStride is notify_off_multiplier: queue q's notification
	// address is PCINotifyAddress + q*PCINotifyStride, so that each
	// queue has its own ioeventfd.
	PCINotifyStride  = 4
	PCINotifyAddress = pciNotify

	commonLen    = 0x40 // struct virtio_pci_common_cfg, up to queue_reset, rounded up
	pciMaxNotify = pciTable - pciNotify
)

// Offsets of the common configuration's fields (virtio 1.2, 4.1.4.3).
const (
	cDevFeatSel    = 0x00
	cDevFeat       = 0x04
	cDrvFeatSel    = 0x08
	cDrvFeat       = 0x0c
	cConfigVector  = 0x10
	cNumQueues     = 0x12
	cStatus        = 0x14
	cConfigGen     = 0x15
	cQueueSel      = 0x16
	cQueueSize     = 0x18
	cQueueVector   = 0x1a
	cQueueEnable   = 0x1c
	cQueueNotifyOf = 0x1e
	cQueueDesc     = 0x20
	cQueueDriver   = 0x28
	cQueueDevice   = 0x30
)

// Virtio PCI capability types (virtio 1.2, 4.1.4).
const (
	capCommon = 1
	capNotify = 2
	capISR    = 3
	capDevice = 4
)

// NoVector is VIRTIO_MSI_NO_VECTOR: no MSI-X vector.
const NoVector = 0xffff

// PCITransport is a virtio-pci device (modern, virtio 1.2, 4.1): a PCI
// function whose one memory BAR holds its structures, with MSI-X, through
// which the driver takes interrupts without touching a device register.
// There are no INTx interrupts: a driver must use MSI-X, as Linux's does,
// and the ISR only records what happened.
type PCITransport struct {
	core
	fn *pci.Function
	// The vectors of the configuration change and of each queue
	// (core.mu).
	configVector uint16
	queueVectors []uint16
}

// pciClasses are the PCI classes of the device types that have one that
// fits (the others are "other", 0xff0000).
var pciClasses = map[uint32]uint32{1: 0x020000, 2: 0x010000, 5: 0x058000}

// NewPCITransport makes dev a virtio-pci device named name (for log
// lines), with its BAR at bar (PCIBARSize bytes, aligned to its size),
// reading guest memory through mem and sending MSI-X messages through
// msi; gate (nil: none) holds back the work that Kick does.
func NewPCITransport(name string, dev Device, mem Memory, bar uint32, msi func(addr uint64, data uint32), gate *Gate, log *slog.Logger) (*PCITransport, error) {
	nq := len(dev.QueueSizes())
	if nq*PCINotifyStride > pciMaxNotify || nq+1 > (pciPBA-pciTable)/16 {
		return nil, fmt.Errorf("%s: %d queues: too many for the BAR", name, nq)
	}
	class, ok := pciClasses[dev.Type()]
	if !ok {
		class = 0xff0000
	}
	h := pci.Header{Vendor: 0x1af4, Device: 0x1040 + uint16(dev.Type()), Revision: 1, Class: class, SubVendor: 0x1af4, SubDevice: 0x1100}
	fn, err := pci.NewFunction(name, h, bar, PCIBARSize, msi, log)
	if err != nil {
		return nil, err
	}
	cfgLen := max((len(dev.Config())+3)&^3, 4)
	for _, c := range []struct {
		typ       byte
		off, size uint32
	}{{capCommon, pciCommon, commonLen}, {capISR, pciISR, 4}, {capDevice, pciDevice, uint32(cfgLen)}, {capNotify, pciNotify, uint32(nq * PCINotifyStride)}} {
		// struct virtio_pci_cap after cap_vndr and cap_next: cap_len,
		// cfg_type, bar, id, padding[2], offset, length; the notify
		// capability adds notify_off_multiplier.
		body := []byte{16, c.typ, 0, 0, 0, 0}
		body = binary.LittleEndian.AppendUint32(body, c.off)
		body = binary.LittleEndian.AppendUint32(body, c.size)
		if c.typ == capNotify {
			body[0] = 20
			body = binary.LittleEndian.AppendUint32(body, PCINotifyStride)
		}
		if _, err := fn.AddCap(pci.CapVendor, body); err != nil {
			return nil, err
		}
	}
	// One vector per queue and one for configuration changes.
	if err := fn.AddMSIX(nq+1, pciTable, pciPBA); err != nil {
		return nil, err
	}
	t := &PCITransport{fn: fn}
	t.core = newCore(name, dev, mem, gate, log, t)
	t.core.reset()
	if k, ok := dev.(Kicker); ok {
		k.SetKick(t.Kick)
	}
	return t, nil
}

// interrupt sends the vector the driver gave the queue or the
// configuration change (front). Without MSI-X the ISR records it and
// nothing more happens: the function has no INTx line.
func (t *PCITransport) interrupt(q int) {
	v := t.configVector
	if q < 0 {
		t.st.InterruptStatus |= intConfigChange
	} else {
		v = t.queueVectors[q]
		if !t.fn.MSIXEnabled() {
			t.st.InterruptStatus |= intUsedBuffer
		}
	}
	if v != NoVector {
		t.fn.Signal(v)
	}
}

// reset gives every queue its largest size, which the driver may lower,
// and no vectors (front).
func (t *PCITransport) reset() {
	t.configVector = NoVector
	t.queueVectors = make([]uint16, len(t.st.Queues))
	for i, s := range t.dev.QueueSizes() {
		t.queueVectors[i] = NoVector
		t.st.Queues[i].Size = s
	}
}

// ConfigRead reads the function's configuration space (pci.Device).
func (t *PCITransport) ConfigRead(off uint64, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.fn.ConfigRead(off, data)
}

// ConfigWrite writes the function's configuration space (pci.Device).
func (t *PCITransport) ConfigWrite(off uint64, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.fn.ConfigWrite(off, data)
}

// BAR is where the function's BAR lies and its size: what it claims on
// the MMIO bus.
func (t *PCITransport) BAR() (addr, size uint32) { return t.fn.BAR() }

// Read handles a guest read of the BAR (bus.Device). While the guest has
// the BAR's decoding off, it reads all-ones, as nothing answers.
func (t *PCITransport) Read(off uint64, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(data)
	switch {
	case !t.fn.MemoryEnabled():
		for i := range data {
			data[i] = 0xff
		}
	case t.fn.InMSIX(off):
		t.fn.TableRead(off, data)
	case off >= pciCommon && off < pciCommon+commonLen:
		t.readCommon(off-pciCommon, data)
	case off == pciISR && len(data) > 0:
		// Reading the ISR clears it (virtio 1.2, 4.1.4.5).
		data[0] = byte(t.st.InterruptStatus)
		t.st.InterruptStatus = 0
	case off >= pciDevice && off < pciDevice+0x1000:
		if cfg, o := t.dev.Config(), off-pciDevice; o < uint64(len(cfg)) {
			copy(data, cfg[o:])
		}
	}
}

// Write handles a guest write to the BAR (bus.Device). A write to a
// queue's notification address notifies it, whatever the value: each
// queue has its own address.
func (t *PCITransport) Write(off uint64, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case !t.fn.MemoryEnabled():
	case t.fn.InMSIX(off):
		t.fn.TableWrite(off, data)
	case off >= pciCommon && off < pciCommon+commonLen:
		t.writeCommon(off-pciCommon, data)
	case off >= pciNotify && off < pciNotify+uint64(len(t.qs)*PCINotifyStride):
		t.notify(uint32((off - pciNotify) / PCINotifyStride))
	}
}

// commonWidth is each common configuration field's width, by offset; 0:
// none starts there.
func commonWidth(off uint64) int {
	switch off {
	case cStatus, cConfigGen:
		return 1
	case cConfigVector, cNumQueues, cQueueSel, cQueueSize, cQueueVector, cQueueEnable, cQueueNotifyOf:
		return 2
	case cDevFeatSel, cDevFeat, cDrvFeatSel, cDrvFeat:
		return 4
	case cQueueDesc, cQueueDriver, cQueueDevice:
		return 8
	}
	return 0
}

// fieldOK says whether an access of n bytes at off is one the common
// configuration takes: a whole field, or a 32-bit half of a 64-bit one
// (virtio 1.2, 4.1.3.1: the driver accesses 64-bit fields as two 32-bit
// halves).
func fieldOK(off uint64, n int) bool {
	if w := commonWidth(off); w == n || w == 8 && n == 4 {
		return true
	}
	return n == 4 && commonWidth(off-4) == 8
}

func (t *PCITransport) readCommon(off uint64, data []byte) {
	if !fieldOK(off, len(data)) {
		return
	}
	var b [commonLen + 8]byte
	le := binary.LittleEndian
	le.PutUint32(b[cDevFeatSel:], t.st.DeviceFeatSel)
	le.PutUint32(b[cDevFeat:], t.deviceFeatures())
	le.PutUint32(b[cDrvFeatSel:], t.st.DriverFeatSel)
	if t.st.DriverFeatSel < 2 {
		le.PutUint32(b[cDrvFeat:], uint32(t.st.DriverFeatures>>(32*t.st.DriverFeatSel)))
	}
	le.PutUint16(b[cConfigVector:], t.configVector)
	le.PutUint16(b[cNumQueues:], uint16(len(t.qs)))
	b[cStatus] = byte(t.st.Status)
	b[cConfigGen] = byte(t.st.ConfigGeneration)
	le.PutUint16(b[cQueueSel:], uint16(t.st.QueueSel))
	if q := t.queue(); q != nil {
		le.PutUint16(b[cQueueSize:], q.Size)
		le.PutUint16(b[cQueueVector:], t.queueVectors[t.st.QueueSel])
		if q.Ready {
			le.PutUint16(b[cQueueEnable:], 1)
		}
		le.PutUint16(b[cQueueNotifyOf:], uint16(t.st.QueueSel))
		le.PutUint64(b[cQueueDesc:], q.Desc)
		le.PutUint64(b[cQueueDriver:], q.Avail)
		le.PutUint64(b[cQueueDevice:], q.Used)
	}
	copy(data, b[off:])
}

func (t *PCITransport) writeCommon(off uint64, data []byte) {
	if !fieldOK(off, len(data)) {
		return
	}
	var v uint64
	for i, c := range data {
		v |= uint64(c) << (8 * i)
	}
	// set64 writes the half or whole of a 64-bit field that the access
	// at off covers, within the field at base.
	set64 := func(base uint64, f *uint64) {
		shift := 8 * (off - base)
		mask := uint64(1)<<(8*uint64(len(data))) - 1
		if len(data) == 8 {
			mask = ^uint64(0)
		}
		*f = *f&^(mask<<shift) | v<<shift
	}
	switch {
	case off == cDevFeatSel:
		t.st.DeviceFeatSel = uint32(v)
	case off == cDrvFeatSel:
		t.st.DriverFeatSel = uint32(v)
	case off == cDrvFeat:
		t.setDriverFeatures(uint32(v))
	case off == cConfigVector:
		t.configVector = t.vector(uint16(v))
	case off == cStatus:
		t.setStatus(uint32(v))
	case off == cQueueSel:
		t.st.QueueSel = uint32(v)
	case off == cQueueSize:
		t.setQueue(func(q *QueueState) { q.Size = uint16(v) })
	case off == cQueueVector:
		if t.queue() != nil {
			t.queueVectors[t.st.QueueSel] = t.vector(uint16(v))
		}
	case off == cQueueEnable:
		// A driver may not write 0 (virtio 1.2, 4.1.4.3.2); only a
		// reset stops a queue.
		if v == 1 {
			t.setReady(true)
		}
	case off >= cQueueDesc && off < cQueueDesc+8:
		t.setQueue(func(q *QueueState) { set64(cQueueDesc, &q.Desc) })
	case off >= cQueueDriver && off < cQueueDriver+8:
		t.setQueue(func(q *QueueState) { set64(cQueueDriver, &q.Avail) })
	case off >= cQueueDevice && off < cQueueDevice+8:
		t.setQueue(func(q *QueueState) { set64(cQueueDevice, &q.Used) })
	}
}

// vector is v if the MSI-X table has it, else NoVector, which tells the
// driver that reads it back that the device refused it (virtio 1.2,
// 4.1.5.1.2).
func (t *PCITransport) vector(v uint16) uint16 {
	if int(v) > len(t.qs) {
		return NoVector
	}
	return v
}

// Save returns the transport's state, its PCI function's with it.
func (t *PCITransport) Save() (TransportState, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.save()
	st.PCI = PCIState{Function: t.fn.Save(), ConfigVector: t.configVector, QueueVectors: append([]uint16(nil), t.queueVectors...)}
	return st, nil
}

// Restore puts the transport in state st; its live queues must lie in
// guest RAM as they did. Its MSI-X messages carry their addresses, so
// nothing is left to set up in KVM.
func (t *PCITransport) Restore(st TransportState) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(st.PCI.QueueVectors) != len(t.dev.QueueSizes()) {
		return fmt.Errorf("%s: %d queue vectors in the state, the device has %d queues", t.name, len(st.PCI.QueueVectors), len(t.dev.QueueSizes()))
	}
	for _, v := range append([]uint16{st.PCI.ConfigVector}, st.PCI.QueueVectors...) {
		if t.vector(v) != v {
			return fmt.Errorf("%s: MSI-X vector %d in the state: the table has %d", t.name, v, len(t.qs)+1)
		}
	}
	old := t.fn.Save()
	if err := t.fn.Restore(st.PCI.Function); err != nil {
		return fmt.Errorf("%s: %w", t.name, err)
	}
	if err := t.restore(st); err != nil {
		// The function goes back to what it was: nothing changes.
		_ = t.fn.Restore(old)
		return err
	}
	t.configVector = st.PCI.ConfigVector
	t.queueVectors = append([]uint16(nil), st.PCI.QueueVectors...)
	return nil
}
