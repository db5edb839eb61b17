package pci

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"reflect"
	"strings"
	"testing"

	"github.com/sfvmm/sfvmm/vmm/devices/devtest"
)

const (
	testBAR   = 0xe000_0000
	testSize  = 0x8000
	testTable = 0x4000
	testPBA   = 0x5000
)

// msg is an MSI-X message the function sent.
type msg struct {
	addr uint64
	data uint32
}

// fixture is a bus holding one function like a virtio-pci one: a vendor
// capability and MSI-X with three vectors.
type fixture struct {
	fn   *Function
	bus  *Bus
	sent []msg
	logs *bytes.Buffer
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	x := &fixture{logs: &bytes.Buffer{}}
	log := slog.New(slog.NewTextHandler(x.logs, nil))
	fn, err := NewFunction("test", Header{Vendor: 0x1af4, Device: 0x1042, Revision: 1, Class: 0x010000, SubVendor: 0x1af4, SubDevice: 0x1100},
		testBAR, testSize, func(a uint64, d uint32) { x.sent = append(x.sent, msg{a, d}) }, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fn.AddCap(CapVendor, []byte{16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	if err := fn.AddMSIX(3, testTable, testPBA); err != nil {
		t.Fatal(err)
	}
	x.fn = fn
	// The function is its own Device here: the test is its only user.
	if x.bus, err = NewBus([]Device{fn}, log); err != nil {
		t.Fatal(err)
	}
	return x
}

// in and out are port accesses of len(data) bytes at port (0xCF8...).
func (x *fixture) in(port uint64, n int) uint32 {
	b := make([]byte, n)
	x.bus.Read(port-ConfigPort, b)
	v := uint32(0)
	for i, c := range b {
		v |= uint32(c) << (8 * i)
	}
	return v
}

func (x *fixture) out(port uint64, n int, v uint32) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	x.bus.Write(port-ConfigPort, b)
}

// cfg reads n bytes at reg of device dev on bus 0, as Linux's
// pci_conf1_read does.
func (x *fixture) cfg(dev, reg uint32, n int) uint32 {
	x.out(0xcf8, 4, 0x8000_0000|dev<<11|reg&^3)
	return x.in(0xcfc+uint64(reg&3), n)
}

func (x *fixture) setCfg(dev, reg uint32, n int, v uint32) {
	x.out(0xcf8, 4, 0x8000_0000|dev<<11|reg&^3)
	x.out(0xcfc+uint64(reg&3), n, v)
}

func (x *fixture) table(off uint64, v uint32) {
	x.fn.TableWrite(testTable+off, binary.LittleEndian.AppendUint32(nil, v))
}

// Linux's check of configuration mechanism #1 (pci_check_type1 and
// pci_sanity_check), then its scan of bus 0: the host bridge at 00:00.0,
// the function at 00:01.0, nothing elsewhere.
func TestLinuxProbe(t *testing.T) {
	x := newFixture(t)
	x.out(0xcfb, 1, 0x01)
	tmp := x.in(0xcf8, 4)
	x.out(0xcf8, 4, 0x8000_0000)
	if got := x.in(0xcf8, 4); got != 0x8000_0000 {
		t.Fatalf("address register reads %#x after 0x80000000 was written", got)
	}
	if got := x.cfg(0, 0x0a, 2); got != 0x0600 {
		t.Errorf("00:00.0 class %#x, want 0x0600 (host bridge)", got)
	}
	x.out(0xcf8, 4, tmp)
	for _, c := range []struct {
		dev, reg uint32
		n        int
		want     uint32
	}{
		{0, 0, 4, 0x0008_1b36},
		{1, 0, 4, 0x1042_1af4},
		{1, 0x08, 4, 0x0100_0001}, // class, revision
		{1, 0x0e, 1, 0},           // header type 0, single function
		{1, 0x2c, 4, 0x1100_1af4},
		{1, 0x10, 4, testBAR},
		{1, 0x06, 2, 0x10}, // status: capability list
		{1, 0x3d, 1, 0},    // no INTx pin
		{2, 0, 4, 0xffff_ffff},
		{31, 0, 2, 0xffff},
		{1, 0x03, 2, 0xffff}, // across the dword: nothing answers
	} {
		if got := x.cfg(c.dev, c.reg, c.n); got != c.want {
			t.Errorf("00:%02x.0 register %#x (%d bytes) = %#x, want %#x", c.dev, c.reg, c.n, got, c.want)
		}
	}
	x.out(0xcf8, 4, 0x8000_0100|1<<11) // function 1
	if got := x.in(0xcfc, 4); got != 0xffff_ffff {
		t.Errorf("function 00:01.1 answers: %#x", got)
	}
	x.out(0xcf8, 4, 1<<11) // enable bit clear
	if got := x.in(0xcfc, 4); got != 0xffff_ffff {
		t.Errorf("an access without the enable bit answers: %#x", got)
	}
}

// The capability list, as Linux walks it: the vendor capability, then
// MSI-X with its table size, table and PBA in BAR 0.
func TestCapabilities(t *testing.T) {
	x := newFixture(t)
	var ids []uint32
	for pos := x.cfg(1, 0x34, 1); pos != 0; pos = x.cfg(1, pos+1, 1) {
		ids = append(ids, x.cfg(1, pos, 1))
		if x.cfg(1, pos, 1) == capMSIX {
			if ctl := x.cfg(1, pos+2, 2); ctl != 2 {
				t.Errorf("MSI-X control %#x, want table size 3 (2), disabled", ctl)
			}
			if tbl, pba := x.cfg(1, pos+4, 4), x.cfg(1, pos+8, 4); tbl != testTable || pba != testPBA {
				t.Errorf("MSI-X table %#x PBA %#x, want %#x and %#x in BAR 0", tbl, pba, testTable, testPBA)
			}
		}
		if len(ids) > 48 {
			t.Fatal("the capability list loops")
		}
	}
	if !reflect.DeepEqual(ids, []uint32{CapVendor, capMSIX}) {
		t.Errorf("capabilities %#x, want vendor then MSI-X", ids)
	}
}

// BAR sizing as Linux does it (decoding off, all-ones, read the mask,
// write the address back); a write that would move the BAR is undone,
// with one log line however many come.
func TestBAR(t *testing.T) {
	x := newFixture(t)
	x.setCfg(1, 0x04, 2, 0)
	x.setCfg(1, 0x10, 4, 0xffff_ffff)
	if got := x.cfg(1, 0x10, 4); got != ^uint32(testSize-1) {
		t.Errorf("sizing reads %#x, want %#x", got, ^uint32(testSize-1))
	}
	x.setCfg(1, 0x10, 4, testBAR)
	x.setCfg(1, 0x04, 2, CommandMemory)
	if got := x.cfg(1, 0x10, 4); got != testBAR || !x.fn.MemoryEnabled() {
		t.Errorf("BAR %#x, decoding %v after sizing; want %#x, on", got, x.fn.MemoryEnabled(), testBAR)
	}
	for _, v := range []uint32{0xd000_0000, 0, 0x1234_5678} {
		x.setCfg(1, 0x10, 4, v)
		if got := x.cfg(1, 0x10, 4); got != testBAR {
			t.Errorf("after writing %#x the BAR reads %#x, want it where it was", v, got)
		}
	}
	x.setCfg(1, 0x12, 2, 0xd000) // the high half alone
	if got := x.cfg(1, 0x10, 4); got != testBAR {
		t.Errorf("after a 16-bit write the BAR reads %#x", got)
	}
	if n := strings.Count(x.logs.String(), "level=WARN"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, x.logs)
	}
	// Read-only registers stay.
	x.setCfg(1, 0, 4, 0)
	x.setCfg(1, 0x08, 4, 0)
	if x.cfg(1, 0, 4) != 0x1042_1af4 || x.cfg(1, 0x08, 4) != 0x0100_0001 {
		t.Error("identity registers took a write")
	}
}

// MSI-X per PCI 3.0, 6.8.2: a vector sends its message while enabled and
// unmasked, is pending (PBA) while masked by itself or by the function,
// and sends it once unmasked; the PBA is read-only; accesses of odd sizes
// or outside the table do nothing.
func TestMSIX(t *testing.T) {
	x := newFixture(t)
	ctl := uint32(firstCap + 16 + 2) // after the 16-byte vendor capability
	x.fn.Signal(0)
	if len(x.sent) != 0 {
		t.Fatal("a message while MSI-X is disabled")
	}
	x.table(0x10, 0xfee0_0000)
	x.table(0x14, 0)
	x.table(0x18, 0x41)
	x.setCfg(1, ctl, 2, msixEnable|msixFnMask)
	x.fn.Signal(1)
	if len(x.sent) != 0 || !x.fn.st.MSIX[1].Pending {
		t.Fatal("a message from a masked vector, or not pending")
	}
	x.setCfg(1, ctl, 2, msixEnable) // function unmasked, vector still masked
	if len(x.sent) != 0 {
		t.Fatal("a message from a masked vector")
	}
	pba := make([]byte, 8)
	x.fn.TableRead(testPBA, pba)
	if pba[0] != 2 {
		t.Errorf("PBA %x, want bit 1", pba)
	}
	x.fn.TableWrite(testPBA, []byte{0, 0, 0, 0}) // read-only
	x.table(0x1c, 0)                             // unmask vector 1
	if want := []msg{{0xfee0_0000, 0x41}}; !reflect.DeepEqual(x.sent, want) || x.fn.st.MSIX[1].Pending {
		t.Fatalf("after unmasking: sent %v, pending %v; want %v, not pending", x.sent, x.fn.st.MSIX[1].Pending, want)
	}
	x.fn.Signal(1)
	x.fn.Signal(7) // no such vector
	if len(x.sent) != 2 {
		t.Errorf("%d messages, want 2", len(x.sent))
	}
	// A 64-bit write of the address, and reads of every width back.
	x.fn.TableWrite(testTable+0x20, binary.LittleEndian.AppendUint64(nil, 0x1_fee0_1000))
	q := make([]byte, 8)
	x.fn.TableRead(testTable+0x20, q)
	if binary.LittleEndian.Uint64(q) != 0x1_fee0_1000 {
		t.Errorf("entry 2 address %x", q)
	}
	before := x.fn.Save()
	for _, a := range []struct {
		off uint64
		n   int
	}{{testTable + 0x1a, 2}, {testTable + 0x11, 4}, {testTable + 0x18, 1}, {testTable + 0x30, 4}, {testTable + 0x2c, 8},
		{testTable - 4, 4}, {testPBA + 8, 4}, {testTable + 0x14, 8}, {testPBA, 4}} {
		x.fn.TableWrite(a.off, make([]byte, a.n))
		x.fn.TableRead(a.off, bytes.Repeat([]byte{0xaa}, a.n))
	}
	if !reflect.DeepEqual(before, x.fn.Save()) {
		t.Error("an odd-sized or out-of-range table write changed the function")
	}
}

// The function's and the bus's states survive save→restore→save, and a
// state of another shape is refused.
func TestStateRoundTrip(t *testing.T) {
	x := newFixture(t)
	x.setCfg(1, 0x04, 2, CommandMemory)
	x.table(0x08, 0x99)
	x.fn.Signal(0)
	x.out(0xcf8, 4, 0x8000_0810)
	y := newFixture(t)
	devtest.RoundTrip[FunctionState](t, snap{x.fn}, snap{y.fn})
	devtest.RoundTrip[BusState](t, x.bus, y.bus)
	if y.cfg(1, 0x04, 2) != CommandMemory {
		t.Error("the command register was not restored")
	}
	bad := x.fn.Save()
	bad.MSIX = bad.MSIX[:1]
	if err := y.fn.Restore(bad); err == nil {
		t.Error("a state with another vector count was taken")
	}
	bad = x.fn.Save()
	bad.Config[0] = 0
	if err := y.fn.Restore(bad); err == nil {
		t.Error("a state with another vendor was taken")
	}
	bad = x.fn.Save()
	binary.LittleEndian.PutUint32(bad.Config[regBAR0:], 0xd000_0000)
	if err := y.fn.Restore(bad); err == nil {
		t.Error("a state with the BAR elsewhere was taken")
	}
}

// snap gives Function the Save signature devtest.RoundTrip wants.
type snap struct{ f *Function }

func (s snap) Save() (FunctionState, error)   { return s.f.Save(), nil }
func (s snap) Restore(st FunctionState) error { return s.f.Restore(st) }

func TestNewFunctionRefuses(t *testing.T) {
	for _, c := range []struct{ bar, size uint32 }{{0xe000_0000, 0x3000}, {0xe000_1000, 0x8000}, {0, 8}} {
		if _, err := NewFunction("bad", Header{}, c.bar, c.size, nil, nil); err == nil {
			t.Errorf("BAR of %#x bytes at %#x taken", c.size, c.bar)
		}
	}
	f, _ := NewFunction("f", Header{}, testBAR, 0x1000, nil, nil)
	if err := f.AddMSIX(300, 0x800, 0xf00); err == nil {
		t.Error("an MSI-X table past the BAR taken")
	}
	for range 20 {
		f.AddCap(CapVendor, make([]byte, 14))
	}
	if _, err := f.AddCap(CapVendor, make([]byte, 14)); err == nil {
		t.Error("a capability past the configuration space taken")
	}
	if _, err := NewBus(make([]Device, 32), nil); err == nil {
		t.Error("a bus of 33 devices taken")
	}
}

// FuzzConfig throws arbitrary accesses at the configuration ports, the
// MSI-X table and the PBA, with snapshots between: nothing may panic, the
// identity and the BAR stay, no message leaves a masked or disabled
// vector, and every state survives save→restore→save. Each access takes
// 6 bytes: control (bit 0 write; bits 1-2 width 1, 2, 4 or 8; bits 3-4
// target: address port, data port, table/PBA, snapshot), offset, and 4
// value bytes.
func FuzzConfig(f *testing.F) {
	f.Add([]byte{
		0x05 | 0<<3, 0, 0x10, 0x08, 0, 0x80, // address 00:01.0 reg 0x10
		0x05 | 1<<3, 0, 0xff, 0xff, 0xff, 0xff, // size the BAR
		0x04 | 1<<3, 0, 0, 0, 0, 0,
		0x05 | 0<<3, 0, 0x50, 0x08, 0, 0x80, // MSI-X control
		0x03 | 1<<3, 2, 0, 0x80, 0, 0, // enable
		0x05 | 2<<3, 0x0c, 0, 0, 0, 0, // unmask vector 0
		0x00 | 3<<3, 0, 0, 0, 0, 0, // snapshot
	})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > devtest.MaxFuzzInput {
			return
		}
		x := newFixture(t)
		id := x.cfg(1, 0, 4)
		widths := [4]int{1, 2, 4, 8}
		for ; len(b) >= 6; b = b[6:] {
			data := make([]byte, widths[b[0]>>1&3])
			copy(data, b[2:6])
			write := b[0]&1 != 0
			switch b[0] >> 3 & 3 {
			case 0, 1:
				port := uint64(b[1] % 8)
				if b[0]>>3&3 == 1 {
					port = 4 + uint64(b[1]%4)
				}
				if write {
					x.bus.Write(port, data)
				} else {
					x.bus.Read(port, data)
				}
			case 2:
				off := testTable + uint64(b[1])*8
				if write {
					x.fn.TableWrite(off, data)
				} else {
					x.fn.TableRead(off, data)
				}
			case 3:
				y := newFixture(t)
				devtest.RoundTrip[FunctionState](t, snap{x.fn}, snap{y.fn})
			}
			sent := len(x.sent)
			x.fn.Signal(uint16(b[1] % 4))
			if len(x.sent) > sent && (!x.fn.unmasked() || x.fn.st.MSIX[b[1]%4].Control&msixMasked != 0) {
				t.Fatal("a message from a masked or disabled vector")
			}
		}
		if got := x.cfg(1, 0, 4); got != id {
			t.Fatalf("identity %#x, want %#x", got, id)
		}
		if bar := x.cfg(1, 0x10, 4); bar != testBAR && bar != ^uint32(testSize-1) {
			t.Fatalf("BAR %#x: moved", bar)
		}
	})
}
