// Package bus dispatches port-I/O and MMIO accesses from vCPUs to the devices
// that claimed address ranges. It is not a device model: devices live in
// their own packages and only implement Device.
//
// An access that no device claims is logged (rate-limited) and ignored;
// reads of unclaimed addresses return all ones, as on real hardware with
// nothing decoding the address. A guest can never stop the VMM this way.
package bus

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Device handles the accesses to a range it claimed. offset is relative to
// the base of the range; len(data) is the access width (1, 2, 4 or 8).
// A Device is called from vCPU goroutines concurrently and must do its own
// locking.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

type entry struct {
	base, size uint64
	dev        Device
}

// Bus is an address space (port I/O or MMIO) shared by all vCPUs.
type Bus struct {
	name string
	log  *slog.Logger

	mu      sync.RWMutex // guards entries
	entries []entry      // sorted by base, non-overlapping

	logMu     sync.Mutex // guards the fields below
	logWindow time.Time
	logCount  int
	dropped   int
}

// unclaimedLogBurst is how many unclaimed accesses are logged per second; the
// rest are counted and summarised, so a guest hammering an unclaimed port
// cannot flood the log.
const unclaimedLogBurst = 10

// New returns an empty bus; name ("pio", "mmio") prefixes log lines and logf
// receives them (nil discards them).
func New(name string, log *slog.Logger) *Bus {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Bus{name: name, log: log}
}

// Register claims [base, base+size) for d. Overlapping claims are refused.
func (b *Bus) Register(base, size uint64, d Device) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("%s bus: invalid range %#x+%#x", b.name, base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].base >= base })
	if i > 0 {
		if p := b.entries[i-1]; p.base+p.size > base {
			return fmt.Errorf("%s bus: range %#x+%#x overlaps %#x+%#x", b.name, base, size, p.base, p.size)
		}
	}
	if i < len(b.entries) && base+size > b.entries[i].base {
		n := b.entries[i]
		return fmt.Errorf("%s bus: range %#x+%#x overlaps %#x+%#x", b.name, base, size, n.base, n.size)
	}
	b.entries = append(b.entries, entry{})
	copy(b.entries[i+1:], b.entries[i:])
	b.entries[i] = entry{base: base, size: size, dev: d}
	return nil
}

// find returns the device claiming the whole access [addr, addr+n).
func (b *Bus) find(addr uint64, n int) (Device, uint64, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].base > addr }) - 1
	if i < 0 {
		return nil, 0, false
	}
	e := b.entries[i]
	off := addr - e.base
	if off >= e.size || off+uint64(n) > e.size {
		return nil, 0, false
	}
	return e.dev, off, true
}

// Read performs a guest read of len(data) bytes at addr.
func (b *Bus) Read(addr uint64, data []byte) {
	if d, off, ok := b.find(addr, len(data)); ok {
		d.Read(off, data)
		return
	}
	for i := range data {
		data[i] = 0xff
	}
	b.unclaimed("read", addr, len(data), 0)
}

// Write performs a guest write of data at addr.
func (b *Bus) Write(addr uint64, data []byte) {
	if d, off, ok := b.find(addr, len(data)); ok {
		d.Write(off, data)
		return
	}
	var v uint64
	for i := len(data) - 1; i >= 0; i-- {
		v = v<<8 | uint64(data[i])
	}
	b.unclaimed("write", addr, len(data), v)
}

func (b *Bus) unclaimed(op string, addr uint64, n int, v uint64) {
	// The common case, a guest probing ports at the default level, costs
	// no lock, clock read or formatting on the vCPU's exit path.
	if !b.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	b.logMu.Lock()
	defer b.logMu.Unlock()
	now := time.Now()
	if now.Sub(b.logWindow) >= time.Second {
		if b.dropped > 0 {
			b.log.Debug(fmt.Sprintf("%s bus: %d more unclaimed accesses not logged", b.name, b.dropped))
		}
		b.logWindow, b.logCount, b.dropped = now, 0, 0
	}
	if b.logCount >= unclaimedLogBurst {
		b.dropped++
		return
	}
	b.logCount++
	if op == "write" {
		b.log.Debug(fmt.Sprintf("%s bus: unclaimed %d-byte write of %#x at %#x ignored", b.name, n, v, addr))
	} else {
		b.log.Debug(fmt.Sprintf("%s bus: unclaimed %d-byte read at %#x returns all ones", b.name, n, addr))
	}
}
