package devtest_test

import (
	"encoding/binary"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/vmm/bus"
	"github.com/sfvmm/sfvmm/vmm/devices"
	"github.com/sfvmm/sfvmm/vmm/devices/devtest"
)

// machine is the VMM's device table on one port I/O bus.
type machine struct {
	pio    *bus.Bus
	set    *devices.Set
	ranges []devices.Range
}

func newMachine(t testing.TB) *machine {
	t.Helper()
	m := &machine{pio: bus.New("pio", nil)}
	var err error
	m.set, err = devices.New(devices.Wiring{
		IRQ: func(uint32) func(bool) { return func(bool) {} }, Console: io.Discard,
		Now:  func() time.Time { return time.Unix(1700000000, 0) },
		CPUs: 2, RAMSize: 1 << 30, Cmdline: "console=ttyS0",
		DebugExit: func(int) {}, Reset: func() {}, PowerOff: func() {}, CloneExit: func(uint32) {},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.set.Register(m.pio, bus.New("mmio", nil)); err != nil {
		t.Fatal(err)
	}
	for _, e := range m.set.Entries() {
		m.ranges = append(m.ranges, e.PIO...)
	}
	return m
}

// run interprets b as guest accesses over the whole machine: each takes 7
// bytes (device, control, offset, 4 value bytes); a device index past the
// end instead feeds serial input or snapshots every device.
func (m *machine) run(t testing.TB, b []byte) {
	widths := [8]int{1, 1, 2, 4, 1, 2, 4, 8}
	var buf [8]byte
	for ; len(b) >= 7; b = b[7:] {
		sel := int(b[0]) % (len(m.ranges) + 2)
		switch sel {
		case len(m.ranges):
			m.set.Serial.Input(b[3:7])
			continue
		case len(m.ranges) + 1:
			m.roundTrip(t)
			continue
		}
		r := m.ranges[sel]
		addr := r.Base + uint64(b[2])%(r.Size+1)
		data := buf[:widths[(b[1]>>1)&7]]
		binary.LittleEndian.PutUint32(buf[:4], binary.LittleEndian.Uint32(b[3:7]))
		if b[1]&1 != 0 {
			m.pio.Write(addr, data)
		} else {
			m.pio.Read(addr, data)
		}
	}
}

// roundTrip saves every device of the table, restores the state and
// saves again: the two states must be equal.
func (m *machine) roundTrip(t testing.TB) {
	t.Helper()
	st, err := m.set.Save()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.set.Restore(st); err != nil {
		t.Fatalf("restore what was saved: %v", err)
	}
	again, err := m.set.Save()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st, again) {
		t.Fatalf("state changed across save/restore:\n%+v\n%+v", st, again)
	}
}

// FuzzDevices throws arbitrary accesses at every device through the port
// bus, interleaved with host input and snapshots: nothing may panic and
// every state must survive save→restore→save.
func FuzzDevices(f *testing.F) {
	f.Add([]byte{
		0, 1, 2, 0x07, 0, 0, 0, // serial FCR: FIFO on, clear both
		0, 1, 1, 0x0f, 0, 0, 0, // serial IER: everything
		7, 0, 0, 'h', 'i', 0, 0, // input
		0, 1, 0, 'x', 0, 0, 0, // transmit
		2, 1, 0, 0xaa, 0, 0, 0, // i8042 self test
		1, 0, 0, 0, 0, 0, 0, // read the answer
		3, 3, 0, 0x0b, 0x86, 0, 0, // RTC: SET via outw index+data
		4, 3, 0, 0x19, 0, 0, 0, // fw_cfg file directory
		4, 0, 1, 0, 0, 0, 0,
		5, 3, 4, 0x00, 0x34, 0, 0, // S5
		6, 1, 0, 3, 0, 0, 0, // debug exit
		8, 0, 0, 0, 0, 0, 0, // snapshot
	})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > devtest.MaxFuzzInput {
			return
		}
		newMachine(t).run(t, b)
	})
}

func TestDriveWidths(t *testing.T) {
	var seen []int
	d := recorder(func(off uint64, n int) { seen = append(seen, n) })
	ops := []byte{}
	for w := range 8 {
		ops = append(ops, byte(w<<1), 0, 0, 0, 0, 0)
	}
	devtest.Drive(d, 4, ops)
	want := []int{1, 1, 2, 4, 0, 3, 8, 1}
	if len(seen) != len(want) {
		t.Fatalf("saw %v", seen)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Errorf("access %d width %d, want %d", i, seen[i], want[i])
		}
	}
}

type recorder func(off uint64, n int)

func (r recorder) Read(off uint64, data []byte)  { r(off, len(data)) }
func (r recorder) Write(off uint64, data []byte) { r(off, len(data)) }
