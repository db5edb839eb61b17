package devices

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/virtio"
	"github.com/sfvmm/sfvmm/virtio/balloon"
	"github.com/sfvmm/sfvmm/virtio/blk"
	"github.com/sfvmm/sfvmm/virtio/rng"
	"github.com/sfvmm/sfvmm/virtio/vsock"
	"github.com/sfvmm/sfvmm/vmm/boot/acpi"

	"github.com/sfvmm/sfvmm/vmm/bus"
	"github.com/sfvmm/sfvmm/vmm/devices/acpipm"
	"github.com/sfvmm/sfvmm/vmm/devices/debugexit"
	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
	"github.com/sfvmm/sfvmm/vmm/devices/fwcfg"
	"github.com/sfvmm/sfvmm/vmm/devices/i8042"
	"github.com/sfvmm/sfvmm/vmm/devices/rtc"
	"github.com/sfvmm/sfvmm/vmm/devices/serial"
	"github.com/sfvmm/sfvmm/vmm/devices/vmgenid"
	"github.com/sfvmm/sfvmm/vmm/pci"
)

// Wiring is what the machine gives its devices.
type Wiring struct {
	// IRQ returns the interrupt output of ISA line n.
	IRQ     func(n uint32) func(level bool)
	Console io.Writer // COM1's output
	Now     func() time.Time
	CPUs    int
	RAMSize uint64
	Cmdline string
	// How the guest ends the machine.
	DebugExit func(code int)
	Reset     func()
	PowerOff  func()
	CloneExit func(status uint32)
	// ForkHost serves the fork device's calls; nil answers them with
	// SF_ENOFORK.
	ForkHost forkdev.Host
	// The optional devices, guest RAM for those that use it, and where
	// they say that a guest broke one.
	Options Options
	Memory  Memory
	Log     *slog.Logger
	// Discard hands back guest RAM the guest reported free (balloon).
	Discard func(b []byte)
	// Disks back Options.Disks, one each, in order.
	Disks []blk.Backend
	// VsockPath is where host programs reach the guest's vsock ports
	// (package vsock), with Options.VsockCID; the guest's connections to
	// port N of the host go to VsockDial_N (VsockDial "": VsockPath_N).
	VsockPath, VsockDial string
	// IOEventFD makes the guest's write of size bytes of value to addr
	// signal the eventfd fd without an exit to the VMM (KVM_IOEVENTFD);
	// nil: every notification exits, and the vCPU's thread serves it.
	IOEventFD func(addr uint64, size, value uint32, fd int) error
	// SignalMSI sends an MSI message to the guest (virtio-pci's
	// interrupts).
	SignalMSI func(addr uint64, data uint32) error
}

// Memory is guest RAM as devices use it.
type Memory interface {
	virtio.Memory
	io.WriterAt
}

// Options are the optional devices; a snapshot keeps them, so that a
// restored machine has the same.
type Options struct {
	Entropy bool // virtio-rng
	// Balloon: virtio-balloon, through which the guest reports free
	// pages, which a fork then never sends.
	Balloon bool
	// VMGenID: the VM generation ID, a new one in every clone and
	// restored snapshot (vmgenid).
	VMGenID bool
	// Disks are virtio-blk devices, in the order the guest finds them
	// (/dev/vda, /dev/vdb, ...).
	Disks []Disk
	// VsockCID, if not 0, is a virtio-vsock device's guest context ID
	// at boot (a clone's or restored machine's is in its state).
	VsockCID uint64
	// PCI puts the virtio devices on a PCI bus (virtio-pci with MSI-X)
	// instead of virtio-mmio: a Linux guest then takes their interrupts
	// without an exit to the VMM, where virtio-mmio's driver reads and
	// acknowledges the interrupt status on each. Tiny test kernels
	// drive virtio-mmio.
	PCI bool
}

// Disk is one disk of Options.
type Disk struct {
	// Path is the image the machine was booted with, for people reading
	// a descriptor: a clone or a restored machine opens the layers its
	// state names instead.
	Path     string
	ReadOnly bool
}

// ACPI is what the DSDT announces of the devices o asks for: the guest
// learns it before the devices exist.
func ACPI(o Options) acpi.Devices {
	d := acpi.Devices{VMGenID: o.VMGenID}
	if o.PCI {
		d.PCI = acpi.PCIHost{Base: PCIBase, Size: PCIWindow}
	} else {
		d.Virtio = virtioSlots(o)
	}
	return d
}

// Where virtio-mmio devices go: the first window at VirtioBase, each next
// one VirtioStride above, in the 32-bit MMIO hole below the IOAPIC; their
// interrupts from GSI VirtioGSI up, IOAPIC pins past the ISA ones.
const (
	VirtioBase   = 0xd000_0000
	VirtioStride = 0x1000
	VirtioGSI    = 16
)

// Where virtio-pci devices' BARs go (Options.PCI): the first at PCIBase,
// each next one virtio.PCIBARSize above, in a window of PCIWindow bytes
// of the 32-bit MMIO hole, above the virtio-mmio windows and below the
// IOAPIC, which the DSDT gives the host bridge.
const (
	PCIBase   = 0xe000_0000
	PCIWindow = 0x1000_0000
)

// virtioDev is a virtio device a machine may have.
type virtioDev struct {
	name  string
	dev   func(Wiring) (virtio.Device, error)
	state func(*States) *virtio.TransportState
}

// stateless wraps a constructor that cannot fail.
func stateless(f func(Wiring) virtio.Device) func(Wiring) (virtio.Device, error) {
	return func(w Wiring) (virtio.Device, error) { return f(w), nil }
}

// virtioDevs are the virtio devices o asks for, in the order they take
// slots: what the DSDT announces and what New builds come from here, so
// that they agree.
func virtioDevs(o Options) []virtioDev {
	var devs []virtioDev
	if o.Entropy {
		devs = append(devs, virtioDev{"virtio-rng", stateless(func(Wiring) virtio.Device { return rng.Device{} }),
			func(s *States) *virtio.TransportState { return &s.VirtioRNG }})
	}
	if o.Balloon {
		devs = append(devs, virtioDev{"virtio-balloon", stateless(func(w Wiring) virtio.Device { return balloon.New(w.Memory, w.Discard) }),
			func(s *States) *virtio.TransportState { return &s.VirtioBalloon }})
	}
	for i := range o.Disks {
		devs = append(devs, virtioDev{fmt.Sprintf("virtio-blk %d", i),
			stateless(func(w Wiring) virtio.Device { return blk.New(w.Disks[i], fmt.Sprintf("sfvmm-disk-%d", i)) }),
			func(s *States) *virtio.TransportState {
				if len(s.Disks) <= i {
					s.Disks = append(s.Disks, make([]virtio.TransportState, i+1-len(s.Disks))...)
				}
				return &s.Disks[i]
			}})
	}
	if o.VsockCID != 0 {
		devs = append(devs, virtioDev{"virtio-vsock",
			func(w Wiring) (virtio.Device, error) { return vsock.New(o.VsockCID, w.VsockPath, w.VsockDial, w.Log) },
			func(s *States) *virtio.TransportState { return &s.VirtioVsock }})
	}
	return devs
}

// virtioSlots are the windows and interrupts of the virtio devices o asks
// for, in the order New puts them.
func virtioSlots(o Options) []acpi.VirtioMMIO {
	var slots []acpi.VirtioMMIO
	for n := range virtioDevs(o) {
		slots = append(slots, acpi.VirtioMMIO{Base: VirtioBase + uint64(n)*VirtioStride, Size: virtio.WindowSize, GSI: VirtioGSI + uint32(n)})
	}
	return slots
}

// States holds each device's state: the plain value a descriptor keeps.
type States struct {
	Serial        serial.State
	DebugExit     debugexit.State
	I8042         i8042.State
	RTC           rtc.State
	FwCfg         fwcfg.State
	ACPIPM        acpipm.State
	Fork          forkdev.State
	VirtioRNG     virtio.TransportState
	VirtioBalloon virtio.TransportState
	VMGenID       vmgenid.State
	Disks         []virtio.TransportState // virtio-blk's, one per disk
	VirtioVsock   virtio.TransportState
	Vsock         vsock.State
	PCI           pci.BusState // the configuration address the guest last wrote; zero without PCI
}

// Range is a device's span on a bus.
type Range struct {
	Base, Size uint64
	Dev        bus.Device
}

// Entry is one device of the table.
type Entry struct {
	Name string
	// PIO is what the device claims on the port I/O bus. The fork
	// device claims nothing: it reads the calling vCPU's registers, so
	// the vCPU loop calls it directly at forkdev.Port.
	PIO []Range
	// MMIO is what it claims in guest-physical address space (none of
	// the legacy devices; virtio-mmio ones will).
	MMIO    []Range
	save    func(*States) error
	restore func(*States) error
}

// Set is one machine's devices.
type Set struct {
	Serial  *serial.UART
	Fork    *forkdev.Device
	VMGenID *vmgenid.Device // nil without
	table   []Entry
	closers []io.Closer // devices with goroutines or host sockets of their own
	// gate holds back the virtio devices' work outside vCPU exits while
	// the machine is held (Quiesce); quiesced says it is closed.
	gate     virtio.Gate
	gateMu   sync.Mutex // guards quiesced
	quiesced bool
	// notifiers are the ioeventfds of the virtio queues; each has a
	// goroutine that serves its queue until Close.
	notifiers []*notifier
	served    sync.WaitGroup
	// transports are the virtio devices', served once more after a
	// restore (Restore).
	transports []transport
}

// transport is a virtio device's transport, virtio-mmio or virtio-pci.
type transport interface {
	bus.Device
	Kick(q int)
	ServeAvailable()
	Save() (virtio.TransportState, error)
	Restore(virtio.TransportState) error
}

// entry builds a table entry for a device whose state is the field of
// States that field points to.
func entry[S any](name string, d interface {
	Save() (S, error)
	Restore(S) error
}, field func(*States) *S, pio ...Range) Entry {
	return Entry{
		Name: name, PIO: pio,
		save: func(s *States) (err error) {
			*field(s), err = d.Save()
			return err
		},
		restore: func(s *States) error { return d.Restore(*field(s)) },
	}
}

// New builds the machine's devices. What fails (a vsock socket path in
// use) closes what was built.
func New(w Wiring) (*Set, error) {
	uart := serial.New(w.IRQ(serial.IRQ), w.Console)
	kbc := i8042.New(w.Reset)
	dexit := debugexit.New(w.DebugExit)
	clock := rtc.New(w.Now, w.RAMSize)
	fw := fwcfg.New(fwcfg.Config{CPUs: w.CPUs, RAMSize: w.RAMSize, Cmdline: w.Cmdline})
	pm := acpipm.New(w.PowerOff, w.IRQ(acpi.SCIIRQ))
	fork := forkdev.New(w.ForkHost, w.CloneExit)
	s := &Set{Serial: uart, Fork: fork, table: []Entry{
		entry("serial", uart, func(s *States) *serial.State { return &s.Serial }, Range{serial.Port, serial.Size, uart}),
		entry("i8042", kbc, func(s *States) *i8042.State { return &s.I8042 },
			Range{i8042.DataPort, 1, kbc.Data()}, Range{i8042.CommandPort, 1, kbc.Command()}),
		entry("rtc", clock, func(s *States) *rtc.State { return &s.RTC }, Range{rtc.Port, rtc.Size, clock}),
		entry("fw_cfg", fw, func(s *States) *fwcfg.State { return &s.FwCfg }, Range{fwcfg.Port, fwcfg.Size, fw}),
		entry("acpi pm", pm, func(s *States) *acpipm.State { return &s.ACPIPM }, Range{acpipm.PM1aEvtBlk, acpipm.Size, pm}),
		entry("debug-exit", dexit, func(s *States) *debugexit.State { return &s.DebugExit }, Range{debugexit.Port, debugexit.Size, dexit}),
		entry("fork device", fork, func(s *States) *forkdev.State { return &s.Fork }),
	}}
	if w.Options.VMGenID {
		s.VMGenID = vmgenid.New(w.Memory, func() { pm.RaiseGPE(acpi.VMGenIDGPE) })
		s.table = append(s.table, entry("vm generation id", s.VMGenID, func(s *States) *vmgenid.State { return &s.VMGenID }))
	}
	var fns []pci.Device // the virtio-pci functions, in slot order
	for i, d := range virtioDevs(w.Options) {
		dev, err := d.dev(w)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("%s: %w", d.name, err)
		}
		v, isVsock := dev.(*vsock.Device)
		if isVsock {
			s.closers = append(s.closers, v)
		}
		t, r, notify, err := s.transport(w, i, d.name, dev)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("%s: %w", d.name, err)
		}
		if p, ok := t.(*virtio.PCITransport); ok {
			fns = append(fns, p)
		}
		s.transports = append(s.transports, t)
		if w.IOEventFD != nil {
			if err := s.notify(t, d.name, len(dev.QueueSizes()), notify, w.IOEventFD, w.Log); err != nil {
				s.Close()
				return nil, fmt.Errorf("%s: %w", d.name, err)
			}
		}
		e := entry(d.name, t, d.state)
		e.MMIO = []Range{r}
		s.table = append(s.table, e)
		if isVsock {
			// After its transport's entry: restoring the device sends
			// the guest an event, which needs the restored queues.
			s.table = append(s.table, entry("vsock", v, func(s *States) *vsock.State { return &s.Vsock }))
		}
	}
	if w.Options.PCI {
		b, err := pci.NewBus(fns, w.Log)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.table = append(s.table, entry("pci", b, func(s *States) *pci.BusState { return &s.PCI }, Range{pci.ConfigPort, pci.ConfigPorts, b}))
	}
	return s, nil
}

// ioeventfd is where and how the driver notifies queue q: a write of
// size bytes of value to addr.
type ioeventfd func(q int) (addr uint64, size, value uint32)

// transport puts dev, the nth virtio device, behind the transport
// w.Options asks for, and says what it claims on the MMIO bus and where
// its queues' notifications go.
func (s *Set) transport(w Wiring, n int, name string, dev virtio.Device) (transport, Range, ioeventfd, error) {
	if !w.Options.PCI {
		slot := virtioSlots(w.Options)[n]
		t := virtio.NewTransport(name, dev, w.Memory, w.IRQ(slot.GSI), &s.gate, w.Log)
		return t, Range{slot.Base, slot.Size, t}, func(q int) (uint64, uint32, uint32) {
			return slot.Base + virtio.NotifyAddress, 4, uint32(q)
		}, nil
	}
	if uint64(n+1)*virtio.PCIBARSize > PCIWindow || n >= pci.MaxDevices {
		return nil, Range{}, nil, fmt.Errorf("device %d: no room on the PCI bus", n)
	}
	bar := uint32(PCIBase + uint64(n)*virtio.PCIBARSize)
	t, err := virtio.NewPCITransport(name, dev, w.Memory, bar, msiSender(name, w.SignalMSI, w.Log), &s.gate, w.Log)
	if err != nil {
		return nil, Range{}, nil, err
	}
	// Linux's driver writes the queue's index, 16 bits, to the queue's
	// own address.
	return t, Range{uint64(bar), virtio.PCIBARSize, t}, func(q int) (uint64, uint32, uint32) {
		return uint64(bar) + virtio.PCINotifyAddress + uint64(q)*virtio.PCINotifyStride, 2, uint32(q)
	}, nil
}

// notify has KVM signal an eventfd for each of t's n queues (device
// name's) when the driver notifies it, and serves the queue from a
// goroutine of its own blocked in the eventfd's read: the vCPU goes back
// to the guest without an exit to the VMM, and the request is served
// while it runs. The read blocks its thread rather than waiting in the
// runtime's poller, so that the guest's notification wakes the thread
// that serves it, and nothing else.
func (s *Set) notify(t transport, name string, n int, where ioeventfd, kvmIOEventFD func(addr uint64, size, value uint32, fd int) error, log *slog.Logger) error {
	for q := range n {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			return fmt.Errorf("queue %d: eventfd: %w", q, err)
		}
		nf := &notifier{fd: fd}
		s.notifiers = append(s.notifiers, nf)
		addr, size, value := where(q)
		if err := kvmIOEventFD(addr, size, value, fd); err != nil {
			return fmt.Errorf("queue %d: ioeventfd: %w", q, err)
		}
		s.served.Add(1)
		go func() {
			defer s.served.Done()
			var b [8]byte
			for {
				_, err := unix.Read(fd, b[:])
				if nf.closed.Load() {
					return
				}
				switch {
				case err == nil:
					t.Kick(q)
				case err != unix.EINTR:
					// Not seen; an eventfd read fails only for a
					// bad buffer. The queue is served no more.
					if log != nil {
						log.Error(fmt.Sprintf("%s: queue %d: ioeventfd read: %v; the queue is no longer served", name, q, err))
					}
					return
				}
			}
		}()
	}
	return nil
}

// A notifier is a queue's ioeventfd, which its goroutine reads.
type notifier struct {
	fd     int
	closed atomic.Bool // the goroutine returns at its next wakeup
}

// stop ends the notifier's goroutine: a blocked read does not end when
// its descriptor is closed, so the goroutine is woken with a write.
func (nf *notifier) stop() error {
	nf.closed.Store(true)
	_, err := unix.Write(nf.fd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	return err
}

// Quiesce waits for the virtio devices' work outside the vCPUs' exits to
// end, and holds it back until Resume: the machine's vCPUs are held, and
// nothing may move its queues.
func (s *Set) Quiesce() {
	s.gateMu.Lock()
	defer s.gateMu.Unlock()
	if !s.quiesced {
		s.gate.Close()
		s.quiesced = true
	}
}

// Resume lets the devices' work go on after Quiesce.
func (s *Set) Resume() {
	s.gateMu.Lock()
	defer s.gateMu.Unlock()
	if s.quiesced {
		s.gate.Open()
		s.quiesced = false
	}
}

// Close stops the devices that run on their own (vsock's goroutines and
// host sockets, the ioeventfds' goroutines). Call it once the vCPUs have
// stopped, before guest RAM goes.
func (s *Set) Close() error {
	// A machine that ends held (paused) has its gate closed, and a
	// queue's goroutine may wait on it.
	s.Resume()
	var errs []error
	for _, nf := range s.notifiers {
		errs = append(errs, nf.stop())
	}
	s.served.Wait()
	for _, nf := range s.notifiers {
		errs = append(errs, unix.Close(nf.fd))
	}
	s.notifiers = nil
	for _, c := range s.closers {
		errs = append(errs, c.Close())
	}
	s.closers = nil
	return errors.Join(errs...)
}

// Entries is the table, in registration order.
func (s *Set) Entries() []Entry { return s.table }

// Register puts every device on its buses.
func (s *Set) Register(pio, mmio *bus.Bus) error {
	for _, e := range s.table {
		for _, b := range []struct {
			bus    *bus.Bus
			ranges []Range
		}{{pio, e.PIO}, {mmio, e.MMIO}} {
			for _, r := range b.ranges {
				if err := b.bus.Register(r.Base, r.Size, r.Dev); err != nil {
					return fmt.Errorf("%s: %w", e.Name, err)
				}
			}
		}
	}
	return nil
}

// Save captures every device's state.
func (s *Set) Save() (States, error) {
	var st States
	for _, e := range s.table {
		if err := e.save(&st); err != nil {
			return st, fmt.Errorf("save %s: %w", e.Name, err)
		}
	}
	return st, nil
}

// Restore puts every device in the state st holds, then has each virtio
// device serve what its queues hold (Transport.ServeAvailable): only once
// all are restored, so that a device whose own state comes after its
// transport's (vsock) is whole first.
func (s *Set) Restore(st States) error {
	for _, e := range s.table {
		if err := e.restore(&st); err != nil {
			return fmt.Errorf("restore %s: %w", e.Name, err)
		}
	}
	for _, t := range s.transports {
		t.ServeAvailable()
	}
	return nil
}

// msiSender sends a device's MSI messages with signal. The guest programs
// the messages: one that KVM refuses is logged once at error level, and
// its repeats, which would come at every interrupt, at debug level.
func msiSender(name string, signal func(addr uint64, data uint32) error, log *slog.Logger) func(addr uint64, data uint32) {
	var refused atomic.Bool
	return func(addr uint64, data uint32) {
		err := signal(addr, data)
		switch {
		case err == nil:
		case refused.CompareAndSwap(false, true):
			log.Error(fmt.Sprintf("%s: MSI %#x/%#x: %v (later refusals are logged at debug level)", name, addr, data, err))
		default:
			log.Debug(fmt.Sprintf("%s: MSI %#x/%#x: %v", name, addr, data, err))
		}
	}
}
