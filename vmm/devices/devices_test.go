package devices

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/virtio"
	"github.com/sfvmm/sfvmm/virtio/blk"
	"github.com/sfvmm/sfvmm/virtio/virtiotest"
	"github.com/sfvmm/sfvmm/vmm/boot/acpi"
	"github.com/sfvmm/sfvmm/vmm/bus"
	"github.com/sfvmm/sfvmm/vmm/devices/acpipm"
	"github.com/sfvmm/sfvmm/vmm/pci"
)

// The FADT and DSDT (package acpi) and the PM device must agree on where
// its registers are: the guest finds them through the tables.
func TestACPIAgreesWithPM(t *testing.T) {
	for _, c := range []struct {
		name      string
		acpi, dev int
	}{
		{"PM1a_EVT_BLK", acpi.PM1aEvtBlk, acpipm.PM1aEvtBlk},
		{"PM1a_CNT_BLK", acpi.PM1aCntBlk, acpipm.PM1aCntBlk},
		{"GPE0_BLK", acpi.GPE0Blk, acpipm.GPE0Blk},
		{"GPE0_BLK length (status and enable bytes)", acpi.GPE0Len, 2},
		{"SLP_TYP of S5", acpi.SlpTypS5, acpipm.SlpTypS5},
	} {
		if c.acpi != c.dev {
			t.Errorf("%s: the tables say %#x, the device %#x", c.name, c.acpi, c.dev)
		}
	}
}

type nullDisk struct{}

func (nullDisk) ReadVec([][]byte, int64) (int, error)  { return 0, nil }
func (nullDisk) WriteVec([][]byte, int64) (int, error) { return 0, nil }
func (nullDisk) Size() uint64                          { return 1 << 20 }
func (nullDisk) ReadOnly() bool                        { return false }
func (nullDisk) Flush() error                          { return nil }
func (nullDisk) Discard(int64, int64) error            { return nil }

type ram struct{ virtiotest.RAM }

func (ram) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }

// What the DSDT announces (ACPI) is where New puts the virtio devices,
// one for one, in order.
func TestVirtioSlotsMatchTheBus(t *testing.T) {
	o := Options{Entropy: true, Balloon: true, Disks: []Disk{{Path: "a"}, {Path: "b", ReadOnly: true}}}
	s, err := New(Wiring{
		IRQ: func(uint32) func(bool) { return func(bool) {} }, Console: io.Discard, Now: time.Now,
		CPUs: 1, RAMSize: 1 << 20, DebugExit: func(int) {}, Reset: func() {}, PowerOff: func() {}, CloneExit: func(uint32) {},
		Options: o, Memory: ram{make(virtiotest.RAM, 1<<20)}, Discard: func([]byte) {},
		Disks: []blk.Backend{nullDisk{}, nullDisk{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got []uint64
	for _, e := range s.Entries() {
		for _, r := range e.MMIO {
			got = append(got, r.Base)
		}
	}
	slots := ACPI(o).Virtio
	if len(slots) != 4 || len(got) != len(slots) {
		t.Fatalf("%d slots announced, %d windows on the bus; want 4 and 4", len(slots), len(got))
	}
	for i, sl := range slots {
		if sl.Base != got[i] || sl.GSI != VirtioGSI+uint32(i) {
			t.Errorf("slot %d: announced at %#x (GSI %d), on the bus at %#x", i, sl.Base, sl.GSI, got[i])
		}
	}
}

// With Options.PCI the virtio devices are PCI functions at devices 1, 2,
// ... of bus 0, each BAR in the window the DSDT gives the host bridge,
// each queue notified at its own address; no virtio-mmio device is
// announced. The set's state, the functions' included, round-trips.
func TestVirtioPCI(t *testing.T) {
	o := Options{Entropy: true, Disks: []Disk{{Path: "a"}}, PCI: true}
	type notify struct {
		addr        uint64
		size, value uint32
	}
	var notifies []notify
	s, err := New(Wiring{
		IRQ: func(uint32) func(bool) { return func(bool) {} }, Console: io.Discard, Now: time.Now,
		CPUs: 1, RAMSize: 1 << 20, DebugExit: func(int) {}, Reset: func() {}, PowerOff: func() {}, CloneExit: func(uint32) {},
		Options: o, Memory: ram{make(virtiotest.RAM, 1<<20)}, Discard: func([]byte) {},
		Disks: []blk.Backend{nullDisk{}},
		IOEventFD: func(addr uint64, size, value uint32, fd int) error {
			notifies = append(notifies, notify{addr, size, value})
			return nil
		},
		SignalMSI: func(uint64, uint32) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := ACPI(o)
	if len(a.Virtio) != 0 || a.PCI.Base != PCIBase || a.PCI.Size != PCIWindow {
		t.Errorf("ACPI announces %d virtio-mmio devices and host bridge window %+v; want none and [%#x, +%#x)", len(a.Virtio), a.PCI, PCIBase, PCIWindow)
	}
	pio, mmio := bus.New("pio", nil), bus.New("mmio", nil)
	if err := s.Register(pio, mmio); err != nil {
		t.Fatal(err)
	}
	cfg := func(dev, reg uint32) uint32 {
		pio.Write(pci.ConfigPort, binary.LittleEndian.AppendUint32(nil, 0x8000_0000|dev<<11|reg))
		b := make([]byte, 4)
		pio.Read(pci.ConfigPort+4, b)
		return binary.LittleEndian.Uint32(b)
	}
	var bars []uint64
	for _, e := range s.Entries() {
		for _, r := range e.MMIO {
			bars = append(bars, r.Base)
		}
	}
	for i, want := range []uint32{0x1044_1af4, 0x1042_1af4} { // rng, blk
		if id := cfg(uint32(pci.Slot(i)), 0); id != want {
			t.Errorf("device %d: id %#x, want %#x", pci.Slot(i), id, want)
		}
		bar := uint64(PCIBase + i*virtio.PCIBARSize)
		if got := cfg(uint32(pci.Slot(i)), 0x10); uint64(got) != bar || len(bars) != 2 || bars[i] != bar {
			t.Errorf("device %d: BAR %#x, on the bus at %v; want %#x", pci.Slot(i), got, bars, bar)
		}
		if n := notifies[i]; n.addr != bar+virtio.PCINotifyAddress || n.size != 2 || n.value != 0 {
			t.Errorf("device %d: ioeventfd %+v", pci.Slot(i), n)
		}
	}
	if bars[len(bars)-1]+virtio.PCIBARSize > PCIBase+PCIWindow {
		t.Error("a BAR outside the window")
	}
	st, err := s.Save()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(st); err != nil {
		t.Fatal(err)
	}
	again, _ := s.Save()
	if !reflect.DeepEqual(st, again) {
		t.Errorf("state changed across save/restore:\n%+v\n%+v", st, again)
	}
}

// An MSI message that KVM refuses (the guest programmed it) is logged
// once at error level; its repeats, one per interrupt, at debug level.
func TestMSIRefusalLoggedOnce(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	refuse := true
	send := msiSender("blk0", func(uint64, uint32) error {
		if refuse {
			return errors.New("invalid argument")
		}
		return nil
	}, log)
	for range 3 {
		send(0x1234, 0x41)
	}
	refuse = false
	send(0xfee00000, 0x41)
	if e, d := strings.Count(out.String(), "level=ERROR"), strings.Count(out.String(), "level=DEBUG"); e != 1 || d != 2 {
		t.Errorf("%d error and %d debug lines, want 1 and 2:\n%s", e, d, out.String())
	}
}

// Each queue's ioeventfd has a goroutine blocked in its read. Close ends
// them all, also one that a notification woke while the machine was held
// (waiting on the gate), and closes the eventfds.
func TestNotifiersClose(t *testing.T) {
	var fds []int
	s, err := New(Wiring{
		IRQ: func(uint32) func(bool) { return func(bool) {} }, Console: io.Discard, Now: time.Now,
		CPUs: 1, RAMSize: 1 << 20, DebugExit: func(int) {}, Reset: func() {}, PowerOff: func() {}, CloneExit: func(uint32) {},
		Options: Options{Entropy: true, Disks: []Disk{{Path: "a"}}}, Memory: ram{make(virtiotest.RAM, 1<<20)}, Discard: func([]byte) {},
		Disks: []blk.Backend{nullDisk{}},
		IOEventFD: func(_ uint64, _, _ uint32, fd int) error {
			fds = append(fds, fd)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) != 2 {
		t.Fatalf("%d ioeventfds for rng and blk, want 2", len(fds))
	}
	s.Quiesce()
	if _, err := unix.Write(fds[0], []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	// The goroutine has read the notification once its eventfd no
	// longer polls readable: it then waits at the gate.
	for deadline := time.Now().Add(10 * time.Second); ; {
		p := []unix.PollFd{{Fd: int32(fds[0]), Events: unix.POLLIN}}
		if n, err := unix.Poll(p, 0); err != nil || n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the notification was not read in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close still waiting for the notifiers after 10 s")
	}
	for _, fd := range fds {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
			t.Errorf("eventfd %d still open after Close (%v)", fd, err)
		}
	}
}
