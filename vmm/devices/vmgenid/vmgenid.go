// Package vmgenid is the VM generation ID (Microsoft's "Virtual Machine
// Generation ID" specification, which Linux 5.18+ follows): 16 random
// bytes in guest memory, at an address the DSDT gives, that change
// whenever the VM's execution forks from another copy of it: in every
// clone and every restored snapshot. A GPE tells the guest, whose vmgenid
// driver then reseeds its random number generator, so that clones'
// /dev/urandom streams differ at once.
package vmgenid

import (
	"crypto/rand"
	"fmt"
	"io"
	"sync"
)

// Size is the ID's length in bytes.
const Size = 16

// Device writes IDs and raises the GPE.
type Device struct {
	mem io.WriterAt // guest RAM
	gpe func()      // raises the GPE whose method notifies the guest

	mu   sync.Mutex
	addr uint64 // the ID's guest-physical address; 0 until Start
}

// New returns the device for guest memory mem; gpe raises the event.
func New(mem io.WriterAt, gpe func()) *Device { return &Device{mem: mem, gpe: gpe} }

// Start puts the first ID at addr, at boot (the guest reads it then; no
// event).
func (d *Device) Start(addr uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addr = addr
	return d.write()
}

// NewGeneration puts a new ID in place and raises the GPE: the machine is
// a clone or a restored snapshot, and no longer the VM it was saved from.
func (d *Device) NewGeneration() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.write(); err != nil {
		return err
	}
	d.gpe()
	return nil
}

// write puts a fresh random ID at d.addr; mu held.
func (d *Device) write() error {
	var id [Size]byte
	rand.Read(id[:])
	if _, err := d.mem.WriteAt(id[:], int64(d.addr)); err != nil {
		return fmt.Errorf("vm generation id at %#x: %w", d.addr, err)
	}
	return nil
}

// State is where the ID lives.
type State struct {
	Addr uint64
}

// Save returns the device's state.
func (d *Device) Save() (State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return State{Addr: d.addr}, nil
}

// Restore takes s; the ID itself is in guest memory.
func (d *Device) Restore(s State) error {
	if s.Addr == 0 || s.Addr%8 != 0 {
		return fmt.Errorf("restore vm generation id: address %#x", s.Addr)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addr = s.Addr
	return nil
}
