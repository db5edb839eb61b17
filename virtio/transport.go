package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/sfvmm/sfvmm/vmm/pci"
)

// Device is one virtio device behind a transport.
type Device interface {
	// Type is the virtio device ID (virtio 1.2, 5): 4 for entropy.
	Type() uint32
	// Features are the device's own feature bits; the transport adds
	// VERSION_1, EVENT_IDX and INDIRECT_DESC.
	Features() uint64
	// QueueSizes are the largest size of each of the device's queues.
	QueueSizes() []uint16
	// Config is the device's configuration space, which the driver
	// reads (nil: none).
	Config() []byte
	// Handle serves one chain of queue q and returns how many bytes it
	// wrote into the chain's writable buffers. An ErrMalformed error
	// fails the device; the chain is not returned. ErrNotNow leaves the
	// chain available, and the queue's later chains with it.
	Handle(q int, c Chain) (written uint32, err error)
}

// ErrNotNow is Handle's answer for a chain the device cannot serve yet:
// an RX buffer while nothing has come from the host (vsock). The chain
// stays available, the transport serves nothing more of that queue, and
// the device kicks the queue (Kicker) once it can serve it.
var ErrNotNow = errors.New("not now")

// Kicker is a device with work that does not wait for the driver: data
// that comes from the host at any time (vsock). A transport gives it
// kick, which serves queue q's available chains as the driver's
// notification would.
//
// kick takes the transport's lock, which is held across Handle: a device
// calls it from a goroutine of its own, holding none of the locks that
// its Handle takes, and never from Handle itself. Once the device is
// stopped it must not call kick again: the guest's RAM may be gone.
type Kicker interface {
	SetKick(kick func(q int))
}

// Gate holds back the work devices do outside the vCPUs' exits (a
// device's own kicks, notifications through an ioeventfd) while the
// machine is held: a fork or snapshot must not see a queue move between
// saving the device's state and freezing guest memory. The zero value is
// open.
type Gate struct{ mu sync.RWMutex }

// Close waits for the work under way to end and holds back any more
// until Open.
func (g *Gate) Close() { g.mu.Lock() }

// Open lets device work go on.
func (g *Gate) Open() { g.mu.Unlock() }

// Device status bits (virtio 1.2, 2.1).
const (
	StatusAcknowledge = 1
	StatusDriver      = 2
	StatusDriverOK    = 4
	StatusFeaturesOK  = 8
	StatusNeedsReset  = 0x40
	StatusFailed      = 0x80
)

// Interrupt status bits (virtio-mmio's InterruptStatus, virtio-pci's
// ISR).
const (
	intUsedBuffer   = 1
	intConfigChange = 2
)

// TransportState is a transport's state: a plain value that snapshots
// keep (the device's own state is the device's).
type TransportState struct {
	Status           uint32
	DeviceFeatSel    uint32
	DriverFeatSel    uint32
	DriverFeatures   uint64
	QueueSel         uint32
	InterruptStatus  uint32 // virtio-pci: the ISR
	ConfigGeneration uint32
	Queues           []QueueState
	Failure          string // why the device needs a reset; "" if it does not
	// PCI is the virtio-pci transport's own state, which only Save
	// fills; zero under virtio-mmio.
	PCI PCIState
}

// PCIState is what the virtio-pci transport adds to TransportState: the
// PCI function (configuration space, MSI-X table) and the MSI-X vector
// of the configuration change and of each queue.
type PCIState struct {
	Function     pci.FunctionState
	ConfigVector uint16
	QueueVectors []uint16
}

// front is a transport's register file: how the driver reaches the
// device, and how the device interrupts it.
type front interface {
	// interrupt tells the driver of used buffers in queue q, or of a
	// configuration change (q < 0); core.mu held.
	interrupt(q int)
	// reset puts the front's own state as a device reset leaves it;
	// core.mu held.
	reset()
}

// core is what both transports share: the device's status, feature
// negotiation and queues, and serving them.
type core struct {
	name  string
	dev   Device
	mem   Memory
	gate  *Gate // nil: none
	log   *slog.Logger
	front front

	// mu guards st, qs and the front's state. It is held across Handle,
	// so a device's own locks come after it (see Kicker).
	mu sync.Mutex
	st TransportState
	qs []Queue
}

func newCore(name string, dev Device, mem Memory, gate *Gate, log *slog.Logger, f front) core {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return core{name: name, dev: dev, mem: mem, gate: gate, log: log, front: f}
}

// Kick serves queue q as the driver's notification would, from outside
// a vCPU's exit: for a Kicker device, or a notification that came through
// an ioeventfd. It waits while the gate is closed.
func (t *core) Kick(q int) {
	if t.gate != nil {
		t.gate.mu.RLock()
		defer t.gate.mu.RUnlock()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if q >= 0 {
		t.notify(uint32(q))
	}
}

func (t *core) features() uint64 {
	return t.dev.Features() | FeatureVersion1 | FeatureEventIdx | FeatureIndirect
}

// reset puts the transport as a device reset leaves it; t.mu held.
func (t *core) reset() {
	t.st = TransportState{ConfigGeneration: t.st.ConfigGeneration, Queues: make([]QueueState, len(t.dev.QueueSizes()))}
	t.qs = make([]Queue, len(t.st.Queues))
	t.front.reset()
}

// fail puts the device in its failed state: DEVICE_NEEDS_RESET, a
// configuration-change interrupt, one log line; it serves nothing until
// the driver resets it. t.mu held.
func (t *core) fail(err error) {
	if t.st.Status&StatusNeedsReset != 0 {
		return
	}
	t.st.Status |= StatusNeedsReset
	t.st.Failure = err.Error()
	t.log.Warn(fmt.Sprintf("%s needs a reset: %s", t.name, t.st.Failure))
	t.front.interrupt(-1)
}

// Failure is why the device needs a reset, or "".
func (t *core) Failure() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.st.Failure
}

// queue is the selected queue's state, nil if there is no such queue.
func (t *core) queue() *QueueState {
	if t.st.QueueSel >= uint32(len(t.st.Queues)) {
		return nil
	}
	return &t.st.Queues[t.st.QueueSel]
}

// setQueue changes the selected queue's configuration, only while the
// queue is not live (virtio 1.2, 4.1.4.3.2, 4.2.3.2): a driver that
// writes it later is ignored.
func (t *core) setQueue(f func(q *QueueState)) {
	if q := t.queue(); q != nil && !q.Ready {
		f(q)
	}
}

// setReady makes the selected queue live (after checking what the driver
// configured) or stops it.
func (t *core) setReady(ready bool) {
	qs := t.queue()
	if qs == nil {
		return
	}
	if !ready {
		qs.Ready = false
		return
	}
	if qs.Ready {
		return
	}
	sel := t.st.QueueSel
	q := Queue{QueueState: *qs}
	q.LastAvail, q.UsedIdx = 0, 0
	q.EventIdx = t.st.DriverFeatures&FeatureEventIdx != 0
	q.Indirect = t.st.DriverFeatures&FeatureIndirect != 0
	if err := q.Check(t.mem, t.dev.QueueSizes()[sel]); err != nil {
		t.fail(fmt.Errorf("queue %d: %w", sel, err))
		return
	}
	q.Ready = true
	*qs = q.QueueState
	t.qs[sel] = q
}

// setDriverFeatures takes 32 bits of the driver's features, the word
// DriverFeatSel selects, until FEATURES_OK.
func (t *core) setDriverFeatures(v uint32) {
	if t.st.DriverFeatSel < 2 && t.st.Status&StatusFeaturesOK == 0 {
		shift := 32 * t.st.DriverFeatSel
		t.st.DriverFeatures = t.st.DriverFeatures&^(0xffffffff<<shift) | uint64(v)<<shift
	}
}

// deviceFeatures is the word of the device's features DeviceFeatSel
// selects.
func (t *core) deviceFeatures() uint32 {
	if t.st.DeviceFeatSel < 2 {
		return uint32(t.features() >> (32 * t.st.DeviceFeatSel))
	}
	return 0
}

// setStatus takes the driver's status: 0 resets the device; FEATURES_OK
// stays clear when the driver took features the device does not offer,
// or not VERSION_1 (the driver then gives up, virtio 1.2, 3.1.1); a
// driver that skips a step fails the device.
func (t *core) setStatus(v uint32) {
	if v == 0 {
		t.reset()
		return
	}
	old := t.st.Status
	if v&^uint32(StatusAcknowledge|StatusDriver|StatusDriverOK|StatusFeaturesOK|StatusFailed) != 0 || v&old != old&^StatusNeedsReset {
		t.fail(fmt.Errorf("status %#x after %#x: bits a driver may not set, or clears", v, old))
		return
	}
	if v&StatusFeaturesOK != 0 && old&StatusFeaturesOK == 0 {
		f := t.st.DriverFeatures
		if f&^t.features() != 0 || f&FeatureVersion1 == 0 {
			v &^= StatusFeaturesOK
		}
	}
	if v&StatusDriverOK != 0 && v&StatusFeaturesOK == 0 {
		t.fail(errors.New("DRIVER_OK without FEATURES_OK"))
		return
	}
	t.st.Status = v | old&StatusNeedsReset
}

// notify serves queue n's available chains, up to one the device cannot
// serve yet (ErrNotNow), which it gives back to the queue.
func (t *core) notify(n uint32) {
	if n >= uint32(len(t.qs)) || t.st.Status&StatusNeedsReset != 0 || t.st.Status&StatusDriverOK == 0 || !t.qs[n].Ready {
		return
	}
	q := &t.qs[n]
	old := q.UsedIdx
	for {
		c, ok, err := q.Pop()
		if err == nil && ok {
			var w uint32
			w, err = t.dev.Handle(int(n), c)
			if errors.Is(err, ErrNotNow) {
				unpop(q)
				break
			}
			if err == nil {
				q.Push(c.Head, w)
			}
		}
		if err != nil {
			t.fail(fmt.Errorf("queue %d: %w", n, err))
			break
		}
		if !ok {
			break
		}
	}
	t.st.Queues[n] = q.QueueState
	if q.WantsInterrupt(old) {
		t.front.interrupt(int(n))
	}
}

// unpop gives back the chain q.Pop took last, which the device cannot
// serve yet: the next Pop takes it again, and a saved state has it
// available. With event index, avail_event goes back with it, to an entry
// the driver has made available already: the driver need not notify for
// the entries behind it, since the device kicks the queue once it can
// serve it.
func unpop(q *Queue) {
	q.LastAvail--
	if q.EventIdx {
		b, _ := q.mem.Slice(q.Used+4+8*uint64(q.Size), 2)
		binary.LittleEndian.PutUint16(b, q.LastAvail)
	}
}

// save returns the core's state; t.mu held.
func (t *core) save() TransportState {
	st := t.st
	st.Queues = append([]QueueState(nil), t.st.Queues...)
	return st
}

// restore puts the core in state st; its live queues must lie in guest
// RAM as they did. t.mu held.
func (t *core) restore(st TransportState) error {
	sizes := t.dev.QueueSizes()
	if len(st.Queues) != len(sizes) {
		return fmt.Errorf("%s: %d queues in the state, the device has %d", t.name, len(st.Queues), len(sizes))
	}
	qs := make([]Queue, len(sizes))
	for i, s := range st.Queues {
		qs[i] = Queue{QueueState: s, Indirect: st.DriverFeatures&FeatureIndirect != 0}
		if !s.Ready {
			continue
		}
		if err := qs[i].Check(t.mem, sizes[i]); err != nil {
			return fmt.Errorf("%s: queue %d: %w", t.name, i, err)
		}
	}
	t.st = st
	t.st.Queues = append([]QueueState(nil), st.Queues...)
	t.st.PCI = PCIState{}
	t.qs = qs
	return nil
}

// ServeAvailable serves what every queue has available. A restored
// machine calls it once all its devices are restored: a request the
// driver made available before the save may not have been served, its
// notification still on its way (in an ioeventfd the saved machine had
// not read), and nothing would notify the restored device of it.
func (t *core) ServeAvailable() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for q := range t.qs {
		t.notify(uint32(q))
	}
}
