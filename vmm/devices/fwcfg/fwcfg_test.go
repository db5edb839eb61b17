package fwcfg

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/sfvmm/sfvmm/vmm/devices/devtest"
)

var cfg = Config{
	CPUs:    4,
	RAMSize: 512 << 20,
	Cmdline: "console=ttyS0 quiet",
	Files: []File{
		{Name: "opt/test/b", Data: []byte("second")},
		{Name: "etc/a", Data: []byte{1, 2, 3}},
	},
}

// selectKey writes a 16-bit selector, as `outw(key, 0x510)` does.
func selectKey(d *FwCfg, key uint16) {
	d.Write(0, binary.LittleEndian.AppendUint16(nil, key))
}

// read reads n bytes from the data port, as `inb(0x511)` does.
func read(d *FwCfg, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		d.Read(1, out[i:i+1])
	}
	return out
}

func item(d *FwCfg, key uint16, n int) []byte {
	selectKey(d, key)
	return read(d, n)
}

func TestItems(t *testing.T) {
	cmd := append([]byte(cfg.Cmdline), 0)
	tests := []struct {
		name string
		key  uint16
		want []byte
	}{
		{"signature", KeySignature, []byte("QEMU")},
		{"ID: traditional interface, no DMA", KeyID, []byte{1, 0, 0, 0}},
		{"RAM size", KeyRAMSize, []byte{0, 0, 0, 0x20, 0, 0, 0, 0}},
		{"CPUs", KeyNBCPUs, []byte{4, 0}},
		{"max CPUs", KeyMaxCPUs, []byte{4, 0}},
		{"cmdline size counts the NUL", KeyCmdlineSize, []byte{byte(len(cmd)), 0, 0, 0}},
		{"cmdline", KeyCmdlineData, cmd},
		{"first file in name order", KeyFileFirst, []byte{1, 2, 3}},
		{"second file", KeyFileFirst + 1, []byte("second")},
		{"no third file", KeyFileFirst + 2, []byte{0, 0}},
		{"unknown key", 0x0002, make([]byte, 16)},
		{"arch-local key", 0x8003, []byte{0, 0, 0, 0}},
		{"write bit ignored", 0x4000 | KeySignature, []byte("QEMU")},
	}
	d := New(cfg)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Read two bytes beyond the item: they must be zero.
			got := item(d, tc.key, len(tc.want)+2)
			want := append(append([]byte(nil), tc.want...), 0, 0)
			if !bytes.Equal(got, want) {
				t.Errorf("item %#04x = % x, want % x", tc.key, got, want)
			}
		})
	}
}

func TestFileDirectory(t *testing.T) {
	d := New(cfg)
	selectKey(d, KeyFileDir)
	n := binary.BigEndian.Uint32(read(d, 4))
	if n != 2 {
		t.Fatalf("directory holds %d files, want 2", n)
	}
	want := []struct {
		name string
		size uint32
		key  uint16
	}{{"etc/a", 3, KeyFileFirst}, {"opt/test/b", 6, KeyFileFirst + 1}}
	for i := range n {
		e := read(d, 64)
		size, key := binary.BigEndian.Uint32(e[0:4]), binary.BigEndian.Uint16(e[4:6])
		name := string(e[8:64])
		name = name[:strings.IndexByte(name, 0)]
		if w := want[i]; name != w.name || size != w.size || key != w.key {
			t.Errorf("entry %d: %q size %d key %#x, want %+v", i, name, size, key, w)
		}
		if e[6] != 0 || e[7] != 0 {
			t.Errorf("entry %d: reserved bytes % x", i, e[6:8])
		}
	}
}

func TestSelectorWidths(t *testing.T) {
	d := New(cfg)
	d.Write(0, []byte{KeyNBCPUs}) // outb to the selector
	if got := read(d, 2); got[0] != 4 {
		t.Errorf("byte-selected CPU count % x", got)
	}
	d.Write(0, []byte{KeyNBCPUs, 0, 0xff, 0xff}) // outl: low 16 bits select
	if got := read(d, 1); got[0] != 4 {
		t.Errorf("dword-selected CPU count % x", got)
	}
	// Selecting again rewinds.
	selectKey(d, KeySignature)
	read(d, 2)
	selectKey(d, KeySignature)
	if got := read(d, 4); string(got) != "QEMU" {
		t.Errorf("reselect read %q", got)
	}
	// Data writes are ignored; reads at the selector port read data.
	d.Write(1, []byte{'X'})
	selectKey(d, KeySignature)
	b := make([]byte, 4)
	d.Read(0, b[:1])
	d.Read(1, b[1:])
	if string(b) != "QEMU" {
		t.Errorf("mixed-port read %q", b)
	}
}

func TestValidate(t *testing.T) {
	long := strings.Repeat("n", MaxFileName+1)
	bad := []Config{
		{CPUs: 0},
		{CPUs: 1 << 16},
		{CPUs: 1, Files: []File{{Name: ""}}},
		{CPUs: 1, Files: []File{{Name: long}}},
		{CPUs: 1, Files: []File{{Name: "a"}, {Name: "a"}}},
	}
	for _, c := range bad {
		if c.Validate() == nil {
			t.Errorf("Validate accepted %+v", c)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate(cfg) = %v", err)
	}
	// New still copes: the name is truncated, not overflowing its slot.
	d := New(Config{CPUs: 1, Files: []File{{Name: long, Data: []byte{9}}}})
	selectKey(d, KeyFileDir)
	e := read(d, 4+64)
	if name := string(e[12:67]); name != long[:MaxFileName] || e[67] != 0 {
		t.Errorf("truncated name %q, terminator %#x", name, e[67])
	}
}

func TestSaveRestore(t *testing.T) {
	d := New(cfg)
	selectKey(d, KeyCmdlineData)
	read(d, 8) // "console="
	fresh := New(cfg)
	devtest.RoundTrip(t, d, fresh)
	if got := read(fresh, 5); string(got) != "ttyS0" {
		t.Errorf("restored device reads %q, want %q", got, "ttyS0")
	}
	if err := fresh.Restore(State{Selector: 0x4000}); err == nil {
		t.Error("Restore accepted the write bit")
	}
}

func FuzzFwCfg(f *testing.F) {
	f.Add([]byte{3, 0, 0x19, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > devtest.MaxFuzzInput {
			return
		}
		d := New(cfg)
		devtest.Drive(d, Size, b)
		devtest.RoundTrip(t, d, New(cfg))
	})
}
