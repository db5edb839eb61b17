package virtio

import (
	"encoding/binary"
	"log/slog"
)

// MMIO register offsets (virtio 1.2, 4.2.2), and the size of a device's
// window: registers, then its configuration space at ConfigOffset.
const (
	regMagic            = 0x000
	regVersion          = 0x004
	regDeviceID         = 0x008
	regVendorID         = 0x00c
	regDeviceFeatures   = 0x010
	regDeviceFeatSel    = 0x014
	regDriverFeatures   = 0x020
	regDriverFeatSel    = 0x024
	regQueueSel         = 0x030
	regQueueNumMax      = 0x034
	regQueueNum         = 0x038
	regQueueReady       = 0x044
	regQueueNotify      = 0x050
	regInterruptStatus  = 0x060
	regInterruptACK     = 0x064
	regStatus           = 0x070
	regQueueDescLow     = 0x080
	regQueueDescHigh    = 0x084
	regQueueDriverLow   = 0x090
	regQueueDriverHigh  = 0x094
	regQueueDeviceLow   = 0x0a0
	regQueueDeviceHigh  = 0x0a4
	regConfigGeneration = 0x0fc
	ConfigOffset        = 0x100
	WindowSize          = 0x200

	magic    = 0x74726976 // "virt"
	vendorID = 0x4d564653 // "SFVM"
)

// Transport is a virtio-mmio device (version 2, modern): its registers on
// the MMIO bus, its queues in guest memory, its interrupt on one line.
type Transport struct {
	core
	irq func(level bool)
}

// NewTransport makes dev a virtio-mmio device named name (for log
// lines), reading guest memory through mem and raising irq; gate (nil:
// none) holds back the work that Kick does.
func NewTransport(name string, dev Device, mem Memory, irq func(level bool), gate *Gate, log *slog.Logger) *Transport {
	t := &Transport{irq: irq}
	t.core = newCore(name, dev, mem, gate, log, t)
	t.core.reset()
	if k, ok := dev.(Kicker); ok {
		k.SetKick(t.Kick)
	}
	return t
}

// NotifyAddress is where in its window the driver writes a queue's index
// to notify it: what an ioeventfd watches.
const NotifyAddress = regQueueNotify

// interrupt raises the line until the driver acknowledges (front).
func (t *Transport) interrupt(q int) {
	if q < 0 {
		t.st.InterruptStatus |= intConfigChange
	} else {
		t.st.InterruptStatus |= intUsedBuffer
	}
	t.irq(true)
}

func (t *Transport) reset() { t.irq(false) }

// Read handles a guest read of the window (bus.Device).
func (t *Transport) Read(off uint64, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(data)
	if off >= ConfigOffset {
		cfg := t.dev.Config()
		if o := off - ConfigOffset; o < uint64(len(cfg)) {
			copy(data, cfg[o:])
		}
		return
	}
	if len(data) != 4 || off%4 != 0 {
		return // registers are 32-bit (virtio 1.2, 4.2.2)
	}
	var v uint32
	switch off {
	case regMagic:
		v = magic
	case regVersion:
		v = 2
	case regDeviceID:
		v = t.dev.Type()
	case regVendorID:
		v = vendorID
	case regDeviceFeatures:
		v = t.deviceFeatures()
	case regQueueNumMax:
		if sizes := t.dev.QueueSizes(); t.st.QueueSel < uint32(len(sizes)) {
			v = uint32(sizes[t.st.QueueSel])
		}
	case regQueueReady:
		if q := t.queue(); q != nil && q.Ready {
			v = 1
		}
	case regInterruptStatus:
		v = t.st.InterruptStatus
	case regStatus:
		v = t.st.Status
	case regConfigGeneration:
		v = t.st.ConfigGeneration
	}
	binary.LittleEndian.PutUint32(data, v)
}

// Write handles a guest write to the window (bus.Device).
func (t *Transport) Write(off uint64, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if off >= ConfigOffset || len(data) != 4 || off%4 != 0 {
		return // no device takes configuration writes yet
	}
	v := binary.LittleEndian.Uint32(data)
	switch off {
	case regDeviceFeatSel:
		t.st.DeviceFeatSel = v
	case regDriverFeatSel:
		t.st.DriverFeatSel = v
	case regDriverFeatures:
		t.setDriverFeatures(v)
	case regQueueSel:
		t.st.QueueSel = v
	case regQueueNum:
		t.setQueue(func(q *QueueState) { q.Size = uint16(min(v, 1<<16-1)) })
	case regQueueDescLow:
		t.setQueue(func(q *QueueState) { q.Desc = q.Desc&^0xffffffff | uint64(v) })
	case regQueueDescHigh:
		t.setQueue(func(q *QueueState) { q.Desc = q.Desc&0xffffffff | uint64(v)<<32 })
	case regQueueDriverLow:
		t.setQueue(func(q *QueueState) { q.Avail = q.Avail&^0xffffffff | uint64(v) })
	case regQueueDriverHigh:
		t.setQueue(func(q *QueueState) { q.Avail = q.Avail&0xffffffff | uint64(v)<<32 })
	case regQueueDeviceLow:
		t.setQueue(func(q *QueueState) { q.Used = q.Used&^0xffffffff | uint64(v) })
	case regQueueDeviceHigh:
		t.setQueue(func(q *QueueState) { q.Used = q.Used&0xffffffff | uint64(v)<<32 })
	case regQueueReady:
		t.setReady(v == 1)
	case regQueueNotify:
		t.notify(v)
	case regInterruptACK:
		t.st.InterruptStatus &^= v
		if t.st.InterruptStatus == 0 {
			t.irq(false)
		}
	case regStatus:
		t.setStatus(v)
	}
}

// Save returns the transport's state.
func (t *Transport) Save() (TransportState, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.save(), nil
}

// Restore puts the transport in state st; its live queues must lie in
// guest RAM as they did.
func (t *Transport) Restore(st TransportState) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.restore(st); err != nil {
		return err
	}
	t.irq(t.st.InterruptStatus != 0)
	return nil
}
