package devices

import (
	"io"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/virtio/blk"
	"github.com/sfvmm/sfvmm/virtio/virtiotest"
	"github.com/sfvmm/sfvmm/vmm/boot/acpi"
	"github.com/sfvmm/sfvmm/vmm/devices/acpipm"
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
