package pci

import (
	"fmt"
	"log/slog"
	"sync"
)

// Configuration mechanism #1 (PCI Local Bus 3.0, 3.2.2.3.2): the guest
// writes an address to ConfigPort's first 4 bytes, then accesses the
// function's configuration space through its last 4 (0xCFC-0xCFF).
const (
	ConfigPort  = 0xcf8
	ConfigPorts = 8 // the ports the bus claims, 0xCF8-0xCFF

	addrEnable = 1 << 31
)

// The host bridge's identity: Red Hat's ID for a generic host bridge, as
// QEMU's machines announce theirs. Linux's check that mechanism #1 works
// (pci_sanity_check) looks for a function of class host bridge on bus 0.
var hostBridge = Header{Vendor: 0x1b36, Device: 0x0008, Class: 0x060000, SubVendor: 0x1b36, SubDevice: 0x0008}

// Device is a function on the bus: its configuration space. The bus
// checks that an access lies within the space and is naturally aligned,
// of 1, 2 or 4 bytes; a Device does its own locking.
type Device interface {
	ConfigRead(off uint64, data []byte)
	ConfigWrite(off uint64, data []byte)
}

// BusState is the bus's state: the address the guest last wrote.
type BusState struct {
	Address uint32
}

// Bus is bus 0 with its host bridge at device 0 and, at devices 1 up,
// the functions given to NewBus, each alone in its slot (function 0).
// It claims ConfigPort on the port I/O bus (bus.Device).
type Bus struct {
	// mu guards addr and the host bridge, and is held across an access
	// to a function's configuration space: the address and the access
	// it selects stay together when vCPUs race.
	mu     sync.Mutex
	addr   uint32
	bridge *Function
	devs   []Device // by device number; [0] is the host bridge
}

// MaxDevices is the most functions a bus takes besides its host bridge.
const MaxDevices = 31

// NewBus makes bus 0 with devs at devices 1, 2, ...
func NewBus(devs []Device, log *slog.Logger) (*Bus, error) {
	if len(devs) > MaxDevices {
		return nil, fmt.Errorf("pci: %d functions: bus 0 takes %d", len(devs), MaxDevices)
	}
	bridge, err := NewFunction("00:00.0", hostBridge, 0, 0, nil, log)
	if err != nil {
		return nil, err
	}
	b := &Bus{bridge: bridge, devs: append([]Device{bridge}, devs...)}
	return b, nil
}

// Slot is the device number a function given to NewBus at index i has.
func Slot(i int) int { return i + 1 }

// target is the function and offset that addr selects, with an access
// of n bytes at byte port of the data port; nil if none answers.
func (b *Bus) target(port uint64, n int) (Device, uint64) {
	a := b.addr
	bus, dev, fn := a>>16&0xff, a>>11&0x1f, a>>8&7
	off := uint64(a&0xfc) + port
	if a&addrEnable == 0 || bus != 0 || fn != 0 || int(dev) >= len(b.devs) || !accessOK(off, n, ConfigSize, 1, 2, 4) {
		return nil, 0
	}
	return b.devs[dev], off
}

// Read handles a guest read of the ports (bus.Device).
func (b *Bus) Read(off uint64, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if off == 0 && len(data) == 4 {
		le.PutUint32(data, b.addr)
		return
	}
	// All-ones is what a read that no function claims returns: Linux
	// takes vendor 0xFFFF for an empty slot.
	for i := range data {
		data[i] = 0xff
	}
	if off < 4 {
		return
	}
	if d, o := b.target(off-4, len(data)); d != nil {
		d.ConfigRead(o, data)
	}
}

// Write handles a guest write to the ports (bus.Device). Only a 4-byte
// write sets the address: Linux's probe writes a byte to 0xCFB, which
// selects configuration mechanism #1 on old chipsets, and expects the
// address register not to change.
func (b *Bus) Write(off uint64, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if off == 0 && len(data) == 4 {
		b.addr = le.Uint32(data) &^ 3
		return
	}
	if off < 4 {
		return
	}
	if d, o := b.target(off-4, len(data)); d != nil {
		d.ConfigWrite(o, data)
	}
}

// Save returns the bus's state (the host bridge has none the guest can
// change that matters: its writable bits mean nothing to sfvmm).
func (b *Bus) Save() (BusState, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return BusState{Address: b.addr}, nil
}

// Restore puts the bus in state st.
func (b *Bus) Restore(st BusState) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addr = st.Address &^ 3
	return nil
}
