// Package serial emulates a 16550A UART, the PC's COM1 (port 0x3f8, IRQ 4),
// well enough for Linux's 8250 driver and for tiny test kernels written for
// QEMU: the full register set, a 16-byte receive FIFO with trigger levels,
// loopback mode and the interrupt identification priorities.
//
// Transmission is instantaneous (the byte goes to the host writer and THR is
// empty again at once) and the receiver is fed from a host-side queue, so
// there is no baud-rate timing: the divisor latch is stored, not used. It is
// not a model of a real line: there are no parity, framing or break errors,
// and the modem inputs outside loopback mode are fixed at DCD, DSR and CTS
// asserted (as QEMU does for a backend that is not a tty).
//
// The interrupt output follows QEMU's hw/char/serial.c: it is the pending
// state of IIR, not gated by MCR.OUT2 (QEMU does not gate it, and test
// images written for QEMU may rely on that). ISA interrupts are
// edge-triggered, so whenever an event must interrupt the guest again the
// line is dropped and raised.
package serial

import (
	"fmt"
	"io"
	"sync"
)

// Register offsets from the base port.
const (
	regRBR = 0 // read: receive buffer; write: THR; DLL with LCR.DLAB
	regIER = 1 // interrupt enable; DLM with LCR.DLAB
	regIIR = 2 // read: interrupt identification; write: FCR
	regLCR = 3
	regMCR = 4
	regLSR = 5
	regMSR = 6
	regSCR = 7
)

// COM1's conventional placement: Port and Size are what the VMM registers
// on the port I/O bus, IRQ the ISA interrupt its line is wired to.
const (
	Port = 0x3f8
	Size = 8
	IRQ  = 4
)

const (
	ierRDI  = 0x01 // received data available
	ierTHRI = 0x02 // transmitter holding register empty
	ierRLSI = 0x04 // receiver line status
	ierMSI  = 0x08 // modem status

	iirNoInt = 0x01
	iirMSI   = 0x00
	iirTHRI  = 0x02
	iirRDI   = 0x04
	iirRLSI  = 0x06
	iirCTI   = 0x0c // character timeout
	iirFIFO  = 0xc0 // FIFOs enabled (what Linux's autoconfig looks for)

	fcrEnable = 0x01
	fcrClrRX  = 0x02
	fcrClrTX  = 0x04
	fcrMask   = 0xc9 // trigger level, DMA mode, enable

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10
	mcrMask = 0x1f

	lsrDR     = 0x01
	lsrOE     = 0x02
	lsrPE     = 0x04
	lsrFE     = 0x08
	lsrBI     = 0x10
	lsrTHRE   = 0x20
	lsrTEMT   = 0x40
	lsrErrors = lsrOE | lsrPE | lsrFE | lsrBI

	msrDCTS  = 0x01
	msrDDSR  = 0x02
	msrTERI  = 0x04
	msrDDCD  = 0x08
	msrCTS   = 0x10
	msrDSR   = 0x20
	msrRI    = 0x40
	msrDCD   = 0x80
	msrDelta = 0x0f
)

// fifoSize is the depth of the 16550A's receive FIFO.
const fifoSize = 16

// MaxPending bounds the host-side input queue and the output buffer: input
// beyond it is dropped (and counted), as is output while the host writer
// is that far behind.
const MaxPending = 64 << 10

// triggerLevels maps FCR bits 7:6 to the receive FIFO interrupt threshold.
var triggerLevels = [4]int{1, 4, 8, 14}

// UART is one 16550A.
type UART struct {
	irq func(level bool) // called with mu held; must not call back into the UART
	out io.Writer        // called without mu held, by one goroutine at a time

	mu sync.Mutex // guards every field below

	ier, lcr, mcr, scr, fcr uint8
	dll, dlm                uint8
	lsrErr                  uint8 // the error bits of LSR (OE); the others are derived
	msrDelta                uint8 // the delta bits of MSR, cleared by reading it
	thrPending              bool  // a THRE interrupt is pending (cleared by reading IIR)
	level                   bool  // the level the interrupt line was last driven to

	rx      []byte // the receive FIFO (holding register when FIFOs are off)
	pending []byte // host input not yet in rx
	dropped uint64 // host input bytes dropped because pending was full

	tx       []byte // transmitted bytes not yet handed to out
	flushing bool   // a goroutine is writing tx to out
	txLost   uint64 // transmitted bytes dropped because tx was full
}

// New returns a UART in its reset state that drives its interrupt line
// through irq and writes transmitted bytes to out. Either may be nil.
func New(irq func(level bool), out io.Writer) *UART {
	if irq == nil {
		irq = func(bool) {}
	}
	if out == nil {
		out = io.Discard
	}
	return &UART{irq: irq, out: out}
}

// Read handles a guest read; wider accesses read consecutive registers.
func (u *UART) Read(offset uint64, data []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range data {
		if off := offset + uint64(i); off < Size {
			data[i] = u.readReg(off)
		} else {
			data[i] = 0xff
		}
	}
}

// Write handles a guest write; wider accesses write consecutive registers.
func (u *UART) Write(offset uint64, data []byte) {
	u.mu.Lock()
	sent := false
	for i, v := range data {
		if off := offset + uint64(i); off < Size {
			sent = u.writeReg(off, v) || sent
		}
	}
	if !sent || u.flushing {
		// Either nothing to send, or the goroutine already flushing will
		// pick up what we queued.
		u.mu.Unlock()
		return
	}
	u.flush() // unlocks
}

// flush hands tx to out until it is empty. It is entered with mu held and
// returns with it released; out is called without the lock, so a slow or
// blocking writer stalls only this goroutine's vCPU, and a writer that calls
// back into the UART (Input, even a register write) cannot deadlock.
func (u *UART) flush() {
	u.flushing = true
	for len(u.tx) > 0 {
		buf := u.tx
		u.tx = nil
		u.mu.Unlock()
		u.out.Write(buf) // a console has no one to report an error to
		u.mu.Lock()
	}
	u.flushing = false
	u.mu.Unlock()
}

func (u *UART) readReg(off uint64) byte {
	switch off {
	case regRBR:
		if u.lcr&lcrDLAB != 0 {
			return u.dll
		}
		var b byte
		if len(u.rx) > 0 {
			b = u.rx[0]
			u.rx = append(u.rx[:0], u.rx[1:]...)
			u.fill()
		}
		u.update()
		return b
	case regIER:
		if u.lcr&lcrDLAB != 0 {
			return u.dlm
		}
		return u.ier
	case regIIR:
		iir := u.iir()
		if iir == iirTHRI {
			// Reading IIR while it reports THRE acknowledges that interrupt.
			u.thrPending = false
			u.update()
		}
		if u.fcr&fcrEnable != 0 {
			iir |= iirFIFO
		}
		return iir
	case regLCR:
		return u.lcr
	case regMCR:
		return u.mcr
	case regLSR:
		lsr := u.lsrErr | lsrTHRE | lsrTEMT
		if len(u.rx) > 0 {
			lsr |= lsrDR
		}
		if u.lsrErr != 0 {
			u.lsrErr = 0
			u.update()
		}
		return lsr
	case regMSR:
		msr := u.modemInputs() | u.msrDelta
		if u.msrDelta != 0 {
			u.msrDelta = 0
			u.update()
		}
		return msr
	default: // regSCR
		return u.scr
	}
}

// writeReg performs one register write and reports whether it queued a
// byte for the host.
func (u *UART) writeReg(off uint64, v byte) bool {
	switch off {
	case regRBR:
		if u.lcr&lcrDLAB != 0 {
			u.dll = v
			return false
		}
		return u.transmit(v)
	case regIER:
		if u.lcr&lcrDLAB != 0 {
			u.dlm = v
			return false
		}
		old := u.ier
		u.ier = v & 0x0f
		// Enabling THRI while THR is empty raises THRE even if an earlier
		// IIR read acknowledged it; Linux's THRE test and its console
		// (which saves, clears and restores IER) rely on this. THR is
		// always empty here, since transmission is instantaneous.
		if (old^u.ier)&ierTHRI != 0 {
			u.thrPending = u.ier&ierTHRI != 0
		}
		u.update()
	case regIIR: // FCR
		u.writeFCR(v)
	case regLCR:
		u.lcr = v
	case regMCR:
		old := u.modemInputs()
		u.mcr = v & mcrMask
		u.modemChanged(old)
		u.fill() // leaving loopback reconnects the host input
		u.update()
	case regSCR:
		u.scr = v
	}
	// LSR and MSR are read-only.
	return false
}

// transmit sends one byte: to out normally, back into the receiver in
// loopback mode. THR empties at once, which (as on real hardware once the
// shift register takes the byte) is a new THRE interrupt: the line is
// dropped first so that the guest sees a fresh edge.
func (u *UART) transmit(v byte) bool {
	u.thrPending = false
	u.update()
	u.thrPending = true
	defer u.update()
	if u.mcr&mcrLoop != 0 {
		if len(u.rx) < u.rxCap() {
			u.rx = append(u.rx, v)
		} else {
			u.lsrErr |= lsrOE
		}
		return false
	}
	if len(u.tx) >= MaxPending {
		u.txLost++
		return false
	}
	u.tx = append(u.tx, v)
	return true
}

func (u *UART) writeFCR(v byte) {
	if (v^u.fcr)&fcrEnable != 0 {
		// Switching FIFO mode on or off empties both FIFOs.
		v |= fcrClrRX | fcrClrTX
	}
	if v&fcrClrRX != 0 {
		u.rx = u.rx[:0]
		u.lsrErr &^= lsrBI
	}
	if v&fcrClrTX != 0 {
		u.thrPending = true
	}
	if v&fcrEnable != 0 {
		u.fcr = v & fcrMask
	} else {
		u.fcr = 0 // the other bits are writable only with FIFOs enabled
	}
	u.fill() // bytes still queued on the host side arrive again
	u.update()
}

// rxCap is the receive capacity: the FIFO, or just the holding register.
func (u *UART) rxCap() int {
	if u.fcr&fcrEnable != 0 {
		return fifoSize
	}
	return 1
}

// fill moves host input into the receiver while there is room. In loopback
// mode the receiver is disconnected from the line, so input waits.
func (u *UART) fill() {
	if u.mcr&mcrLoop != 0 || len(u.pending) == 0 {
		return
	}
	n := min(u.rxCap()-len(u.rx), len(u.pending))
	if n <= 0 {
		return
	}
	u.rx = append(u.rx, u.pending[:n]...)
	// Slicing forward keeps this O(1) per byte; append reallocates (and
	// frees the consumed prefix) as the queue refills.
	u.pending = u.pending[n:]
	if len(u.pending) == 0 {
		u.pending = nil
	}
}

// modemInputs returns the MSR status bits. In loopback mode the modem
// control outputs are wired to the inputs: RTS→CTS, DTR→DSR, OUT1→RI,
// OUT2→DCD (Linux's probe checks exactly this).
func (u *UART) modemInputs() byte {
	if u.mcr&mcrLoop == 0 {
		return msrDCD | msrDSR | msrCTS
	}
	var msr byte
	if u.mcr&mcrRTS != 0 {
		msr |= msrCTS
	}
	if u.mcr&mcrDTR != 0 {
		msr |= msrDSR
	}
	if u.mcr&mcrOUT1 != 0 {
		msr |= msrRI
	}
	if u.mcr&mcrOUT2 != 0 {
		msr |= msrDCD
	}
	return msr
}

// modemChanged latches the MSR delta bits for inputs that changed from old.
func (u *UART) modemChanged(old byte) {
	now := u.modemInputs()
	ch := old ^ now
	if ch&msrCTS != 0 {
		u.msrDelta |= msrDCTS
	}
	if ch&msrDSR != 0 {
		u.msrDelta |= msrDDSR
	}
	if old&msrRI != 0 && now&msrRI == 0 { // trailing edge only
		u.msrDelta |= msrTERI
	}
	if ch&msrDCD != 0 {
		u.msrDelta |= msrDDCD
	}
}

// iir returns the highest-priority pending interrupt, without FIFO bits.
// Priorities, highest first: line status, received data (or character
// timeout), THR empty, modem status.
func (u *UART) iir() byte {
	switch {
	case u.ier&ierRLSI != 0 && u.lsrErr != 0:
		return iirRLSI
	case u.ier&ierRDI != 0 && len(u.rx) > 0:
		if u.fcr&fcrEnable != 0 && len(u.rx) < triggerLevels[u.fcr>>6] {
			// Below the trigger level the 16550A interrupts only after a
			// few character times without new input. Input here arrives
			// all at once (what did not fit is waiting in pending, so rx
			// would be full), so that silence has already begun.
			return iirCTI
		}
		return iirRDI
	case u.ier&ierTHRI != 0 && u.thrPending:
		return iirTHRI
	case u.ier&ierMSI != 0 && u.msrDelta != 0:
		return iirMSI
	}
	return iirNoInt
}

// update drives the interrupt line to match IIR.
func (u *UART) update() {
	if level := u.iir() != iirNoInt; level != u.level {
		u.level = level
		u.irq(level)
	}
}

// Input queues host bytes for the guest to receive, for instance what was
// typed on the console. Bytes beyond MaxPending waiting are dropped,
// counted (see Dropped) and reported to the guest as an overrun.
func (u *UART) Input(p []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := min(len(p), MaxPending-len(u.pending))
	u.pending = append(u.pending, p[:n]...)
	if n < len(p) {
		u.dropped += uint64(len(p) - n)
		u.lsrErr |= lsrOE
	}
	u.fill()
	u.update()
}

// Dropped reports how many input bytes were dropped because the guest did
// not read them fast enough, and how many output bytes were dropped because
// the host writer did not keep up.
func (u *UART) Dropped() (in, out uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.dropped, u.txLost
}

// State is the UART's saved state. Output already handed to the host
// writer is not part of it; input not yet read by the guest is.
type State struct {
	IER, LCR, MCR, SCR, FCR uint8
	DLL, DLM                uint8
	LSRErrors               uint8 // OE, PE, FE, BI
	MSRDelta                uint8 // DCTS, DDSR, TERI, DDCD
	THRPending              bool
	RX                      []byte // receive FIFO contents, oldest first
	Pending                 []byte // host input not yet in the FIFO
	Dropped                 uint64
}

// Save returns the UART's state.
func (u *UART) Save() (State, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return State{
		IER: u.ier, LCR: u.lcr, MCR: u.mcr, SCR: u.scr, FCR: u.fcr,
		DLL: u.dll, DLM: u.dlm,
		LSRErrors:  u.lsrErr,
		MSRDelta:   u.msrDelta,
		THRPending: u.thrPending,
		RX:         append([]byte(nil), u.rx...),
		Pending:    append([]byte(nil), u.pending...),
		Dropped:    u.dropped,
	}, nil
}

// Restore replaces the UART's state with s and drives the interrupt line to
// the level s implies. A pending interrupt is raised again even if the
// line was already high before the snapshot: a spurious UART interrupt is
// harmless (the driver finds IIR empty), a lost one can hang the console.
func (u *UART) Restore(s State) error {
	switch {
	case s.IER&^0x0f != 0, s.MCR&^mcrMask != 0, s.FCR&^fcrMask != 0,
		s.LSRErrors&^lsrErrors != 0, s.MSRDelta&^msrDelta != 0:
		return fmt.Errorf("restore serial: reserved register bits set in %+v", s)
	case len(s.RX) > fifoSize || (s.FCR&fcrEnable == 0 && len(s.RX) > 1):
		return fmt.Errorf("restore serial: %d bytes in the receive FIFO", len(s.RX))
	case len(s.Pending) > MaxPending:
		return fmt.Errorf("restore serial: %d bytes of pending input exceed %d", len(s.Pending), MaxPending)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ier, u.lcr, u.mcr, u.scr, u.fcr = s.IER, s.LCR, s.MCR, s.SCR, s.FCR
	u.dll, u.dlm = s.DLL, s.DLM
	u.lsrErr, u.msrDelta, u.thrPending = s.LSRErrors, s.MSRDelta, s.THRPending
	u.rx = append(u.rx[:0], s.RX...)
	u.pending = append([]byte(nil), s.Pending...)
	u.dropped = s.Dropped
	u.fill()
	u.level = u.iir() != iirNoInt
	u.irq(u.level)
	return nil
}
