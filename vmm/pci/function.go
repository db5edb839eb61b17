// Package pci is the PCI bus of an sfvmm machine as its guest sees it: bus
// 0 behind a host bridge at 00:00.0, reached through configuration
// mechanism #1 (ports 0xCF8 and 0xCFC), and the configuration space of its
// functions: a type 0 header, one 32-bit memory BAR that sfvmm places, a
// capability list, and MSI-X, whose table and PBA live in the BAR.
//
// It is not a PCI framework: there are no bridges, no PCIe extended
// configuration space (ECAM), no I/O BARs, no INTx and no hotplug. The
// guest's accesses are untrusted input: one of an odd size, alignment or
// offset reads as all-ones (or zero inside the MSI-X table) and writes
// nothing, and a function logs the first such access of its life.
package pci

import (
	"encoding/binary"
	"fmt"
	"log/slog"
)

// ConfigSize is a function's configuration space (conventional PCI).
const ConfigSize = 256

// Configuration space offsets of the type 0 header (PCI Local Bus 3.0,
// 6.1).
const (
	regVendor    = 0x00
	regCommand   = 0x04
	regStatus    = 0x06
	regRevision  = 0x08
	regCacheLine = 0x0c
	regLatency   = 0x0d
	regBAR0      = 0x10
	regSubVendor = 0x2c
	regCapPtr    = 0x34
	regIntLine   = 0x3c
	firstCap     = 0x40

	statusCapList = 1 << 4
	// CommandMemory enables the function's memory BAR.
	CommandMemory = 1 << 1
	// Command bits the guest may write: I/O and memory decode, bus
	// master, INTx disable.
	commandWritable = 0x0407
)

// Capability IDs.
const (
	CapVendor = 0x09
	capMSIX   = 0x11

	msixEnable   = 1 << 15
	msixFnMask   = 1 << 14
	msixCapLen   = 12
	msixEntryLen = 16
	msixMasked   = 1 // vector control: the entry is masked
)

// Header is what identifies a function.
type Header struct {
	Vendor, Device       uint16
	Revision             uint8
	Class                uint32 // base class, subclass, programming interface: 0xCCSSPP
	SubVendor, SubDevice uint16
}

// MSIXEntry is one vector of a function's MSI-X table (PCI Local Bus 3.0,
// 6.8.2), with its PBA bit.
type MSIXEntry struct {
	Addr    uint64
	Data    uint32
	Control uint32 // bit 0: masked
	Pending bool   // a message waits for the vector to be unmasked
}

// FunctionState is a function's state: a plain value that snapshots keep.
type FunctionState struct {
	Config [ConfigSize]byte
	MSIX   []MSIXEntry
}

// Function is one PCI function's configuration space and MSI-X vectors.
// It does no locking: its user's lock guards it (a virtio transport's).
type Function struct {
	name    string
	st      FunctionState
	wmask   [ConfigSize]byte // the bits of Config the guest may write
	bar     uint32           // where sfvmm put BAR 0; 0: no BAR
	barSize uint32
	msixCap int // the MSI-X capability's offset; 0: none
	// msixTable and msixPBA are where in BAR 0 the table and PBA lie.
	msixTable, msixPBA uint32
	next               int // where the next capability goes
	lastCap            int // the last capability's offset, whose next pointer a new one sets
	signal             func(addr uint64, data uint32)
	log                *slog.Logger
	warned             bool // a bad access has been logged
}

// NewFunction makes a function with header h whose BAR 0 is a 32-bit
// memory BAR of size bytes (a power of 2, at least 16) at bar, both fixed
// by sfvmm; size 0: no BAR. signal sends an MSI-X message.
func NewFunction(name string, h Header, bar, size uint32, signal func(addr uint64, data uint32), log *slog.Logger) (*Function, error) {
	if size != 0 && (size < 16 || size&(size-1) != 0 || bar%size != 0) {
		return nil, fmt.Errorf("pci %s: BAR of %#x bytes at %#x: not a power of 2 of at least 16, aligned to its size", name, size, bar)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Function{name: name, bar: bar, barSize: size, next: firstCap, signal: signal, log: log}
	c := f.st.Config[:]
	le.PutUint16(c[regVendor:], h.Vendor)
	le.PutUint16(c[regVendor+2:], h.Device)
	c[regRevision] = h.Revision
	c[regRevision+1], c[regRevision+2], c[regRevision+3] = byte(h.Class), byte(h.Class>>8), byte(h.Class>>16)
	le.PutUint16(c[regSubVendor:], h.SubVendor)
	le.PutUint16(c[regSubVendor+2:], h.SubDevice)
	le.PutUint16(f.wmask[regCommand:], commandWritable)
	f.wmask[regCacheLine], f.wmask[regLatency], f.wmask[regIntLine] = 0xff, 0xff, 0xff
	if size != 0 {
		le.PutUint32(c[regBAR0:], bar)
		le.PutUint32(f.wmask[regBAR0:], ^(size-1)&^0xf)
	}
	return f, nil
}

var le = binary.LittleEndian

// AddCap appends a capability with ID id and body (what follows the ID
// and next pointer) to the list, and returns its offset.
func (f *Function) AddCap(id byte, body []byte) (int, error) {
	off := f.next
	n := (2 + len(body) + 3) &^ 3
	if off+n > ConfigSize {
		return 0, fmt.Errorf("pci %s: capability %#x of %d bytes: no room in configuration space", f.name, id, len(body))
	}
	c := f.st.Config[:]
	c[off] = id
	copy(c[off+2:], body)
	if f.lastCap == 0 {
		c[regCapPtr] = byte(off)
		le.PutUint16(c[regStatus:], le.Uint16(c[regStatus:])|statusCapList)
	} else {
		c[f.lastCap+1] = byte(off)
	}
	f.lastCap, f.next = off, off+n
	return off, nil
}

// AddMSIX adds an MSI-X capability of n vectors, whose table is at
// offset table of BAR 0 and PBA at pba. Every vector starts masked.
func (f *Function) AddMSIX(n int, table, pba uint32) error {
	switch {
	case f.msixCap != 0:
		return fmt.Errorf("pci %s: a second MSI-X capability", f.name)
	case n < 1 || n > 2048:
		return fmt.Errorf("pci %s: %d MSI-X vectors: want 1 to 2048", f.name, n)
	case table%8 != 0 || pba%8 != 0 || uint64(table)+uint64(n)*msixEntryLen > uint64(f.barSize) || uint64(pba)+uint64(n+63)/64*8 > uint64(f.barSize):
		return fmt.Errorf("pci %s: MSI-X table at %#x or PBA at %#x outside BAR 0 or unaligned", f.name, table, pba)
	}
	body := make([]byte, msixCapLen-2)
	le.PutUint16(body, uint16(n-1))
	le.PutUint32(body[2:], table) // BIR 0
	le.PutUint32(body[6:], pba)
	off, err := f.AddCap(capMSIX, body)
	if err != nil {
		return err
	}
	f.msixCap, f.msixTable, f.msixPBA = off, table, pba
	f.wmask[off+3] = byte((msixEnable | msixFnMask) >> 8)
	f.st.MSIX = make([]MSIXEntry, n)
	for i := range f.st.MSIX {
		f.st.MSIX[i].Control = msixMasked
	}
	return nil
}

// bad logs the first bad access of the function's life: a guest that
// makes many must not fill the log.
func (f *Function) bad(format string, args ...any) {
	if f.warned {
		f.log.Debug(fmt.Sprintf("pci %s: "+format, append([]any{f.name}, args...)...))
		return
	}
	f.warned = true
	f.log.Warn(fmt.Sprintf("pci %s: "+format+" (ignored; later ones are logged at debug level)", append([]any{f.name}, args...)...))
}

// accessOK says whether an access of n bytes at off lies in a space of
// size bytes, naturally aligned, of a width in widths.
func accessOK(off uint64, n int, size uint64, widths ...int) bool {
	ok := false
	for _, w := range widths {
		ok = ok || n == w
	}
	return ok && off%uint64(n) == 0 && off < size && size-off >= uint64(n)
}

// ConfigRead reads the configuration space at off into data (1, 2 or 4
// bytes, naturally aligned; anything else reads all-ones).
func (f *Function) ConfigRead(off uint64, data []byte) {
	if !accessOK(off, len(data), ConfigSize, 1, 2, 4) {
		f.bad("configuration read of %d bytes at %#x", len(data), off)
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	copy(data, f.st.Config[off:])
}

// ConfigWrite writes data to the configuration space at off, to the bits
// the guest may write. A BAR is where sfvmm put it: the guest may size it
// (write all-ones, read back the size mask) and write its address back,
// but a write that would move it is undone and logged.
func (f *Function) ConfigWrite(off uint64, data []byte) {
	if !accessOK(off, len(data), ConfigSize, 1, 2, 4) {
		f.bad("configuration write of %d bytes at %#x", len(data), off)
		return
	}
	was := f.unmasked()
	for i, b := range data {
		o := int(off) + i
		f.st.Config[o] = f.st.Config[o]&^f.wmask[o] | b&f.wmask[o]
	}
	if f.barSize != 0 {
		v := le.Uint32(f.st.Config[regBAR0:])
		if v != f.bar && v != ^(f.barSize-1)&^0xf {
			f.bad("BAR 0 moved to %#x: BARs stay where sfvmm put them, at %#x", v, f.bar)
			le.PutUint32(f.st.Config[regBAR0:], f.bar)
		}
	}
	if !was && f.unmasked() {
		f.deliverPending()
	}
}

// MemoryEnabled says whether the guest has the function decode its
// memory BAR (Command's Memory Space bit).
func (f *Function) MemoryEnabled() bool {
	return le.Uint16(f.st.Config[regCommand:])&CommandMemory != 0
}

// BAR is where BAR 0 is and its size.
func (f *Function) BAR() (addr, size uint32) { return f.bar, f.barSize }

func (f *Function) msixControl() uint16 {
	if f.msixCap == 0 {
		return 0
	}
	return le.Uint16(f.st.Config[f.msixCap+2:])
}

// MSIXEnabled says whether the guest enabled MSI-X: the function then
// signals only through its vectors.
func (f *Function) MSIXEnabled() bool { return f.msixControl()&msixEnable != 0 }

// unmasked says whether MSI-X is enabled and not masked as a whole.
func (f *Function) unmasked() bool { return f.msixControl()&(msixEnable|msixFnMask) == msixEnable }

// Signal sends vector v's message, or marks it pending while the vector
// or the function is masked (PCI Local Bus 3.0, 6.8.2.9). It does nothing
// while MSI-X is disabled, or for a vector the table does not have.
func (f *Function) Signal(v uint16) {
	if !f.MSIXEnabled() || int(v) >= len(f.st.MSIX) {
		return
	}
	e := &f.st.MSIX[v]
	if !f.unmasked() || e.Control&msixMasked != 0 {
		e.Pending = true
		return
	}
	f.signal(e.Addr, e.Data)
}

// deliverPending sends the messages of the unmasked vectors that are
// pending.
func (f *Function) deliverPending() {
	if !f.unmasked() {
		return
	}
	for i := range f.st.MSIX {
		if e := &f.st.MSIX[i]; e.Pending && e.Control&msixMasked == 0 {
			e.Pending = false
			f.signal(e.Addr, e.Data)
		}
	}
}

// InMSIX says whether offset off of BAR 0 is in the MSI-X table or PBA,
// which TableRead and TableWrite serve.
func (f *Function) InMSIX(off uint64) bool {
	n := uint64(len(f.st.MSIX))
	return n > 0 && (off >= uint64(f.msixTable) && off < uint64(f.msixTable)+n*msixEntryLen ||
		off >= uint64(f.msixPBA) && off < uint64(f.msixPBA)+(n+63)/64*8)
}

// TableRead reads the MSI-X table or PBA at offset off of BAR 0: 4 or 8
// bytes, naturally aligned (anything else reads zero).
func (f *Function) TableRead(off uint64, data []byte) {
	clear(data)
	n := uint64(len(f.st.MSIX))
	switch {
	case off >= uint64(f.msixPBA) && accessOK(off-uint64(f.msixPBA), len(data), (n+63)/64*8, 4, 8):
		o := off - uint64(f.msixPBA)
		for i := range uint64(len(data)) * 8 {
			if v := o*8 + i; v < n && f.st.MSIX[v].Pending {
				data[i/8] |= 1 << (i % 8)
			}
		}
	case off >= uint64(f.msixTable) && accessOK(off-uint64(f.msixTable), len(data), n*msixEntryLen, 4, 8):
		o := off - uint64(f.msixTable)
		var b [msixEntryLen]byte
		e := f.st.MSIX[o/msixEntryLen]
		le.PutUint64(b[0:], e.Addr)
		le.PutUint32(b[8:], e.Data)
		le.PutUint32(b[12:], e.Control)
		copy(data, b[o%msixEntryLen:])
	default:
		f.bad("MSI-X read of %d bytes at %#x", len(data), off)
	}
}

// TableWrite writes the MSI-X table at offset off of BAR 0: 4 or 8
// bytes, naturally aligned; the PBA is read-only. Unmasking a pending
// vector sends its message.
func (f *Function) TableWrite(off uint64, data []byte) {
	n := uint64(len(f.st.MSIX))
	if off < uint64(f.msixTable) || !accessOK(off-uint64(f.msixTable), len(data), n*msixEntryLen, 4, 8) {
		f.bad("MSI-X write of %d bytes at %#x", len(data), off)
		return
	}
	o := off - uint64(f.msixTable)
	e := &f.st.MSIX[o/msixEntryLen]
	var b [msixEntryLen]byte
	le.PutUint64(b[0:], e.Addr)
	le.PutUint32(b[8:], e.Data)
	le.PutUint32(b[12:], e.Control)
	copy(b[o%msixEntryLen:], data)
	e.Addr, e.Data = le.Uint64(b[0:]), le.Uint32(b[8:])
	e.Control = le.Uint32(b[12:]) & msixMasked // the other bits are reserved
	if e.Pending && e.Control&msixMasked == 0 && f.unmasked() {
		e.Pending = false
		f.signal(e.Addr, e.Data)
	}
}

// Save returns the function's state.
func (f *Function) Save() FunctionState {
	st := f.st
	st.MSIX = append([]MSIXEntry(nil), f.st.MSIX...)
	return st
}

// Restore puts the function in state st, which must be one of this
// function's: the same identity, BAR, capabilities and vector count.
func (f *Function) Restore(st FunctionState) error {
	if len(st.MSIX) != len(f.st.MSIX) {
		return fmt.Errorf("pci %s: %d MSI-X vectors in the state, the function has %d", f.name, len(st.MSIX), len(f.st.MSIX))
	}
	for i := range st.Config {
		if st.Config[i]&^f.wmask[i] != f.st.Config[i]&^f.wmask[i] {
			return fmt.Errorf("pci %s: configuration byte %#x is %#x in the state, the function's is %#x", f.name, i, st.Config[i], f.st.Config[i])
		}
	}
	if f.barSize != 0 {
		if v := le.Uint32(st.Config[regBAR0:]); v != f.bar && v != ^(f.barSize-1)&^0xf {
			return fmt.Errorf("pci %s: BAR 0 at %#x in the state, the function's is at %#x", f.name, v, f.bar)
		}
	}
	f.st = st
	f.st.MSIX = append([]MSIXEntry(nil), st.MSIX...)
	return nil
}
