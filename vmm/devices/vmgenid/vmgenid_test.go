package vmgenid

import (
	"bytes"
	"testing"

	"github.com/sfvmm/sfvmm/vmm/devices/devtest"
)

type ram []byte

func (r ram) WriteAt(p []byte, off int64) (int, error) { return copy(r[off:], p), nil }

// Each generation is a new random ID at the address, and raises the GPE;
// the boot's does not.
func TestGenerations(t *testing.T) {
	mem := make(ram, 0x100)
	gpes := 0
	d := New(mem, func() { gpes++ })
	if err := d.Start(0x40); err != nil {
		t.Fatal(err)
	}
	first := bytes.Clone(mem[0x40:0x50])
	if bytes.Equal(first, make([]byte, Size)) || gpes != 0 {
		t.Fatalf("boot: ID %x, %d events", first, gpes)
	}
	r := New(mem, func() { gpes++ })
	devtest.RoundTrip(t, d, r)
	if err := r.NewGeneration(); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(first, mem[0x40:0x50]) || gpes != 1 {
		t.Errorf("new generation: ID %x (was %x), %d events", mem[0x40:0x50], first, gpes)
	}
	if err := r.Restore(State{Addr: 3}); err == nil {
		t.Error("a misaligned address was taken")
	}
}
