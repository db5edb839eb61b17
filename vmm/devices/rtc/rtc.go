// Package rtc emulates the PC's MC146818 real-time clock and its 128 bytes
// of CMOS RAM: an index port (0x70, bit 7 masks NMI) and a data port
// (0x71).
//
// The clock is host time in UTC plus an offset: the guest reads it in BCD
// or binary and 24- or 12-hour form as register B asks, and writing a time
// register moves the offset, so a time the guest sets keeps running from
// there. While register B's SET bit is on, the time registers are frozen
// and take the guest's writes; clearing SET starts the clock from them,
// which is how Linux sets the RTC. UIP is set for the 244 µs before each
// second boundary, as on the real chip, so readers that wait for it to
// clear finish within that time.
//
// The memory-size bytes are preset the way QEMU's pc.c does, for firmware
// and old kernels that read them. It is not an interrupt source: alarms,
// periodic and update interrupts can be enabled but never fire, and
// register C reads 0.
package rtc

import (
	"fmt"
	"sync"
	"time"

	"github.com/sfvmm/sfvmm/vmm/memory"
)

// Placement on the port I/O bus, and the ISA interrupt the chip would use.
const (
	Port = 0x70
	Size = 2
	IRQ  = 8
)

// Register indexes.
const (
	regSec     = 0x00
	regMin     = 0x02
	regHour    = 0x04
	regDOW     = 0x06
	regDOM     = 0x07
	regMonth   = 0x08
	regYear    = 0x09
	regA       = 0x0a
	regB       = 0x0b
	regC       = 0x0c
	regD       = 0x0d
	regCentury = 0x32 // where the ACPI FADT tells the guest to look
	cmosSize   = 128
)

const (
	aUIP       = 0x80
	aDivider   = 0x70
	aDivNormal = 0x20 // 32.768 kHz time base running
	aReset     = aDivNormal | 0x06

	bSet    = 0x80
	bUIE    = 0x10
	bBinary = 0x04
	b24h    = 0x02
	bReset  = b24h

	dVRT = 0x80 // valid RAM and time: the battery is fine

	// uipHold is how long before each update UIP is set: 8 cycles of the
	// 32.768 kHz base (QEMU uses the same figure).
	uipHold = 8 * time.Second / 32768
)

// Clock is a broken-down time as the time registers hold it, in binary.
type Clock struct {
	Sec, Min, Hour int // Hour is 0-23 whatever the guest's 12/24-hour mode
	DOW            int // day of week, 1 = Sunday
	Day, Month     int // 1-based
	Year           int // full year, century included
}

func clockOf(t time.Time) Clock {
	t = t.UTC()
	return Clock{
		Sec: t.Second(), Min: t.Minute(), Hour: t.Hour(),
		DOW: int(t.Weekday()) + 1,
		Day: t.Day(), Month: int(t.Month()), Year: t.Year(),
	}
}

// time converts c, normalising out-of-range fields (a guest can write a
// 61st second or a 13th month; time.Date carries them over). DOW is
// ignored: it follows from the date.
func (c Clock) time(nsec int) time.Time {
	return time.Date(c.Year, time.Month(c.Month), c.Day, c.Hour, c.Min, c.Sec, nsec, time.UTC)
}

// RTC is the clock and its CMOS RAM.
type RTC struct {
	now func() time.Time

	mu     sync.Mutex // guards the fields below
	index  byte
	nmiOff bool           // bit 7 of the last index write
	cmos   [cmosSize]byte // RAM, alarms, A and B; the time bytes are unused
	offset time.Duration  // guest time = now() + offset
	frozen Clock          // the time registers while B.SET is on
}

// New returns an RTC that reads host time from now (time.Now if nil), with
// the memory-size bytes set for ramBytes of guest RAM laid out as package
// memory lays it out (RAM above memory.HoleStart moves to 4 GiB).
func New(now func() time.Time, ramBytes uint64) *RTC {
	if now == nil {
		now = time.Now
	}
	r := &RTC{now: now}
	r.cmos[regA] = aReset
	r.cmos[regB] = bReset
	r.setMemorySize(ramBytes)
	return r
}

// setMemorySize fills the CMOS bytes BIOSes and old kernels read for the
// amount of RAM, as QEMU's pc_cmos_init does, and the standard checksum.
func (r *RTC) setMemorySize(ram uint64) {
	const kib, mib = 1 << 10, 1 << 20
	low := min(ram, memory.HoleStart)
	high := ram - low
	put16 := func(at int, v uint64) {
		v = min(v, 0xffff)
		r.cmos[at], r.cmos[at+1] = byte(v), byte(v>>8)
	}
	put16(0x15, min(low/kib, 640)) // base memory, KiB
	var ext, ext16 uint64
	if low > mib {
		ext = (low - mib) / kib // KiB above 1 MiB
	}
	if low > 16*mib {
		ext16 = (low - 16*mib) / (64 * kib) // 64 KiB units above 16 MiB
	}
	put16(0x17, ext)
	put16(0x30, ext)
	put16(0x34, ext16)
	above := min(high/(64*kib), 0xffffff) // 64 KiB units above 4 GiB
	r.cmos[0x5b], r.cmos[0x5c], r.cmos[0x5d] = byte(above), byte(above>>8), byte(above>>16)
	var sum uint16
	for _, b := range r.cmos[0x10:0x2e] {
		sum += uint16(b)
	}
	r.cmos[0x2e], r.cmos[0x2f] = byte(sum>>8), byte(sum)
}

// Read handles a guest read: the index port reads all ones (it is
// write-only), the data port the selected register. Wider accesses touch
// consecutive ports.
func (r *RTC) Read(offset uint64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range data {
		data[i] = 0xff
		if offset+uint64(i) == 1 {
			data[i] = r.readReg(r.index)
		}
	}
}

// Write handles a guest write: the index port selects a register (bit 7
// masks NMI), the data port writes it.
func (r *RTC) Write(offset uint64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, v := range data {
		switch offset + uint64(i) {
		case 0:
			r.index, r.nmiOff = v&0x7f, v&0x80 != 0
		case 1:
			r.writeReg(r.index, v)
		}
	}
}

// clock returns the time registers' current contents and the nanoseconds
// into the current second.
func (r *RTC) clock() (Clock, int) {
	if r.cmos[regB]&bSet != 0 {
		return r.frozen, 0
	}
	t := r.now().Add(r.offset)
	return clockOf(t), t.UTC().Nanosecond()
}

func (r *RTC) readReg(i byte) byte {
	switch i {
	case regSec, regMin, regHour, regDOW, regDOM, regMonth, regYear, regCentury:
		c, _ := r.clock()
		switch i {
		case regSec:
			return r.encode(c.Sec)
		case regMin:
			return r.encode(c.Min)
		case regHour:
			return r.encodeHour(c.Hour)
		case regDOW:
			return r.encode(c.DOW)
		case regDOM:
			return r.encode(c.Day)
		case regMonth:
			return r.encode(c.Month)
		case regYear:
			return r.encode(c.Year % 100)
		default:
			return r.encode(c.Year / 100)
		}
	case regA:
		a := r.cmos[regA]
		if a&aDivider == aDivNormal && r.cmos[regB]&bSet == 0 {
			if _, ns := r.clock(); ns >= int(time.Second-uipHold) {
				a |= aUIP
			}
		}
		return a
	case regC:
		return 0 // no interrupt flags: nothing ever fires
	case regD:
		return dVRT
	}
	return r.cmos[i]
}

func (r *RTC) writeReg(i byte, v byte) {
	switch i {
	case regSec, regMin, regHour, regDOW, regDOM, regMonth, regYear, regCentury:
		c, ns := r.clock()
		switch i {
		case regSec:
			c.Sec = r.decode(v)
		case regMin:
			c.Min = r.decode(v)
		case regHour:
			c.Hour = r.decodeHour(v)
		case regDOW:
			c.DOW = r.decode(v) // kept while frozen, recomputed after
		case regDOM:
			c.Day = r.decode(v)
		case regMonth:
			c.Month = r.decode(v)
		case regYear:
			c.Year = c.Year/100*100 + r.decode(v)
		default:
			c.Year = r.decode(v)*100 + c.Year%100
		}
		if r.cmos[regB]&bSet != 0 {
			r.frozen = c
		} else {
			r.offset = c.time(ns).Sub(r.now())
		}
	case regA:
		r.cmos[regA] = v &^ aUIP
	case regB:
		old := r.cmos[regB]
		if v&bSet != 0 {
			v &^= bUIE // setting SET clears UIE
		}
		switch {
		case old&bSet == 0 && v&bSet != 0:
			r.frozen, _ = r.clock()
		case old&bSet != 0 && v&bSet == 0:
			// The divider chain restarts: the new second begins now.
			r.offset = r.frozen.time(0).Sub(r.now())
		}
		r.cmos[regB] = v
	case regC, regD:
		// read-only
	default:
		r.cmos[i] = v
	}
}

func (r *RTC) encode(v int) byte {
	if r.cmos[regB]&bBinary != 0 {
		return byte(v)
	}
	return byte(v/10%10<<4 | v%10)
}

func (r *RTC) decode(v byte) int {
	if r.cmos[regB]&bBinary != 0 {
		return int(v)
	}
	return int(v>>4)*10 + int(v&0x0f)
}

// In 12-hour mode the hour is 1-12 with bit 7 set for PM.
func (r *RTC) encodeHour(h int) byte {
	if r.cmos[regB]&b24h != 0 {
		return r.encode(h)
	}
	h12 := h % 12
	if h12 == 0 {
		h12 = 12
	}
	if h >= 12 {
		return r.encode(h12) | 0x80
	}
	return r.encode(h12)
}

func (r *RTC) decodeHour(v byte) int {
	if r.cmos[regB]&b24h != 0 {
		return r.decode(v)
	}
	h := r.decode(v&0x7f) % 12
	if v&0x80 != 0 {
		h += 12
	}
	return h
}

// State is the RTC's saved state. The clock is saved as its offset from
// host time, so a restored guest's clock has kept running meanwhile, as a
// battery-backed RTC would.
type State struct {
	Index       uint8
	NMIDisabled bool
	CMOS        [cmosSize]byte
	Offset      time.Duration
	Frozen      Clock // the time registers, meaningful while B.SET is on
}

// Save returns the RTC's state.
func (r *RTC) Save() (State, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return State{
		Index: r.index, NMIDisabled: r.nmiOff, CMOS: r.cmos,
		Offset: r.offset, Frozen: r.frozen,
	}, nil
}

// Restore replaces the RTC's state with s.
func (r *RTC) Restore(s State) error {
	f := s.Frozen
	for _, v := range []int{f.Sec, f.Min, f.Hour, f.DOW, f.Day, f.Month} {
		if v < 0 || v > 255 {
			return fmt.Errorf("restore rtc: frozen time %+v out of range", f)
		}
	}
	if s.Index >= cmosSize || f.Year < 0 || f.Year > 25599 {
		return fmt.Errorf("restore rtc: index %#x or year %d out of range", s.Index, f.Year)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.index, r.nmiOff, r.cmos = s.Index, s.NMIDisabled, s.CMOS
	r.offset, r.frozen = s.Offset, s.Frozen
	return nil
}
