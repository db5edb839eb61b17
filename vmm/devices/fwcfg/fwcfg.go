// Package fwcfg emulates the traditional (port I/O, no DMA) interface of
// QEMU's fw_cfg device, through which test kernels written for QEMU learn
// the CPU count, the RAM size and the command line, and read named files.
// The item layout follows QEMU's include/standard-headers/linux/qemu_fw_cfg.h.
//
// The guest writes a 16-bit selector to port 0x510 and reads the selected
// item a byte at a time from port 0x511; reads past the end of an item, and
// reads of items that do not exist, return zeros. Items are read-only: the
// deprecated data writes are ignored, as QEMU has ignored them since 2.4.
//
// It is not QEMU's firmware interface: no kernel, initrd, ACPI or SMBIOS
// items are provided unless the VMM passes them as files.
package fwcfg

import (
	"encoding/binary"
	"fmt"
	"sort"
	"sync"
)

// Placement on the port I/O bus: selector at Port, data at Port+1.
const (
	Port = 0x510
	Size = 2
)

// Selectors (keys) of the items this device serves.
const (
	KeySignature   = 0x0000
	KeyID          = 0x0001
	KeyRAMSize     = 0x0003
	KeyNBCPUs      = 0x0005
	KeyMaxCPUs     = 0x000f
	KeyCmdlineSize = 0x0014
	KeyCmdlineData = 0x0015
	KeyFileDir     = 0x0019
	KeyFileFirst   = 0x0020

	keyWrite   = 0x4000 // "write channel" bit: ignored when selecting
	keyEntries = 0x3fff // the key space of each of the generic and arch tables
)

const (
	featureTraditional = 1 << 0 // the I/O port interface; no DMA (bit 1)

	// MaxFileName is the longest file name, in bytes; a directory entry
	// holds 56 bytes including the terminating NUL.
	MaxFileName = 55
	// MaxFiles is how many files fit between KeyFileFirst and the end of
	// the generic key space.
	MaxFiles = keyEntries + 1 - KeyFileFirst
)

// File is a named blob the guest finds through the file directory.
type File struct {
	Name string
	Data []byte
}

// Config is what the device tells the guest.
type Config struct {
	CPUs    int
	RAMSize uint64
	Cmdline string
	Files   []File
}

// Validate reports what New would have to truncate or drop.
func (c Config) Validate() error {
	if c.CPUs < 1 || c.CPUs > 0xffff {
		return fmt.Errorf("fw_cfg: %d CPUs out of range", c.CPUs)
	}
	if len(c.Files) > MaxFiles {
		return fmt.Errorf("fw_cfg: %d files, at most %d fit", len(c.Files), MaxFiles)
	}
	seen := make(map[string]bool, len(c.Files))
	for _, f := range c.Files {
		switch {
		case f.Name == "" || len(f.Name) > MaxFileName:
			return fmt.Errorf("fw_cfg: file name %q must be 1 to %d bytes", f.Name, MaxFileName)
		case seen[f.Name]:
			return fmt.Errorf("fw_cfg: duplicate file %q", f.Name)
		case uint64(len(f.Data)) > 0xffffffff:
			return fmt.Errorf("fw_cfg: file %q larger than 4 GiB", f.Name)
		}
		seen[f.Name] = true
	}
	return nil
}

// FwCfg is the device.
type FwCfg struct {
	items map[uint16][]byte // immutable after New

	mu     sync.Mutex // guards the fields below
	key    uint16     // the selected item's key
	offset uint32     // next byte of the item to read
}

// New builds the items from cfg. The VMM should check cfg with Validate
// first; New never fails, and instead clamps the CPU count to 16 bits,
// truncates file names to MaxFileName bytes and drops files beyond
// MaxFiles. Files are listed, and numbered from KeyFileFirst, in name
// order, as QEMU does.
func New(cfg Config) *FwCfg {
	u16 := func(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
	cpus := uint16(min(max(cfg.CPUs, 0), 0xffff))
	cmdline := append([]byte(cfg.Cmdline), 0) // QEMU counts the NUL
	items := map[uint16][]byte{
		KeySignature:   []byte("QEMU"),
		KeyID:          binary.LittleEndian.AppendUint32(nil, featureTraditional),
		KeyRAMSize:     binary.LittleEndian.AppendUint64(nil, cfg.RAMSize),
		KeyNBCPUs:      u16(cpus),
		KeyMaxCPUs:     u16(cpus),
		KeyCmdlineSize: binary.LittleEndian.AppendUint32(nil, uint32(len(cmdline))),
		KeyCmdlineData: cmdline,
	}

	files := append([]File(nil), cfg.Files...)
	if len(files) > MaxFiles {
		files = files[:MaxFiles]
	}
	for i := range files {
		if len(files[i].Name) > MaxFileName {
			files[i].Name = files[i].Name[:MaxFileName]
		}
	}
	sort.SliceStable(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	// The directory is big-endian, unlike every other item.
	dir := binary.BigEndian.AppendUint32(nil, uint32(len(files)))
	for i, f := range files {
		key := uint16(KeyFileFirst + i)
		dir = binary.BigEndian.AppendUint32(dir, uint32(len(f.Data)))
		dir = binary.BigEndian.AppendUint16(dir, key)
		dir = append(dir, 0, 0) // reserved
		var name [MaxFileName + 1]byte
		copy(name[:], f.Name)
		dir = append(dir, name[:]...)
		items[key] = f.Data
	}
	items[KeyFileDir] = dir
	return &FwCfg{items: items}
}

// Read returns the next bytes of the selected item, one per byte of the
// access. As in QEMU, whose selector and data ports form one region, a
// read at either port reads data.
func (d *FwCfg) Read(offset uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	item := d.items[d.key]
	for i := range data {
		data[i] = 0
		if uint64(d.offset) < uint64(len(item)) {
			data[i] = item[d.offset]
		}
		if d.offset < 0xffffffff {
			d.offset++
		}
	}
}

// Write selects an item: the little-endian value written at the selector
// port, whatever the width (a byte write selects keys 0-255). Writes to the
// data port are ignored.
func (d *FwCfg) Write(offset uint64, data []byte) {
	if offset != 0 || len(data) == 0 {
		return
	}
	key := uint16(data[0])
	if len(data) > 1 {
		key |= uint16(data[1]) << 8
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.key = key &^ keyWrite
	d.offset = 0
}

// State is the device's saved state: the selection and how far into it the
// guest has read. The items are configuration, not state: restore into a
// device built from the same Config.
type State struct {
	Selector uint16
	Offset   uint32
}

// Save returns the device's state.
func (d *FwCfg) Save() (State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return State{Selector: d.key, Offset: d.offset}, nil
}

// Restore replaces the device's state with s.
func (d *FwCfg) Restore(s State) error {
	if s.Selector&keyWrite != 0 {
		return fmt.Errorf("restore fw_cfg: selector %#04x has the write bit set", s.Selector)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.key, d.offset = s.Selector, s.Offset
	return nil
}
