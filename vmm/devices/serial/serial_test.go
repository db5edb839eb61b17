package serial

import (
	"bytes"
	"io"
	"slices"
	"sync"
	"testing"

	"github.com/sfvmm/sfvmm/vmm/devices/devtest"
)

// line records every level the UART drives its interrupt line to.
type line struct {
	mu     sync.Mutex
	levels []bool
}

func (l *line) set(level bool) {
	l.mu.Lock()
	l.levels = append(l.levels, level)
	l.mu.Unlock()
}

// high reports the current level of the line.
func (l *line) high() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.levels) > 0 && l.levels[len(l.levels)-1]
}

// edges counts the 0→1 transitions seen so far.
func (l *line) edges() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, prev := 0, false
	for _, v := range l.levels {
		if v && !prev {
			n++
		}
		prev = v
	}
	return n
}

type rig struct {
	t    *testing.T
	u    *UART
	irq  *line
	host *bytes.Buffer
}

func newRig(t *testing.T) *rig {
	r := &rig{t: t, irq: &line{}, host: &bytes.Buffer{}}
	r.u = New(r.irq.set, r.host)
	return r
}

func (r *rig) out(off uint64, v byte) { r.u.Write(off, []byte{v}) }

func (r *rig) in(off uint64) byte {
	b := []byte{0}
	r.u.Read(off, b)
	return b[0]
}

func (r *rig) expect(off uint64, want byte, what string) {
	r.t.Helper()
	if got := r.in(off); got != want {
		r.t.Errorf("%s: read reg %d = %#02x, want %#02x", what, off, got, want)
	}
}

func TestTransmitReachesHost(t *testing.T) {
	r := newRig(t)
	for _, b := range []byte("hello\n") {
		r.expect(regLSR, lsrTHRE|lsrTEMT, "LSR before THR write")
		r.out(regRBR, b)
	}
	if got := r.host.String(); got != "hello\n" {
		t.Errorf("host got %q, want %q", got, "hello\n")
	}
}

func TestReceive(t *testing.T) {
	tests := []struct {
		name    string
		fcr     byte
		input   string
		wantIIR byte
	}{
		{"no FIFO", 0, "ab", iirRDI},
		{"FIFO below trigger is a timeout", 0x81, "abc", iirFIFO | iirCTI},
		{"FIFO at trigger", 0x41, "abcd", iirFIFO | iirRDI},
		{"FIFO trigger 1", 0x01, "x", iirFIFO | iirRDI},
		{"FIFO overfull", 0xc1, "0123456789abcdefghij", iirFIFO | iirRDI},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			r.out(regIIR, tc.fcr)
			r.out(regIER, ierRDI)
			if r.irq.high() {
				t.Fatal("interrupt raised before any input")
			}
			r.u.Input([]byte(tc.input))
			if !r.irq.high() {
				t.Fatal("no interrupt after input")
			}
			r.expect(regIIR, tc.wantIIR, "IIR with data")
			var got []byte
			for r.in(regLSR)&lsrDR != 0 {
				got = append(got, r.in(regRBR))
			}
			if string(got) != tc.input {
				t.Errorf("guest read %q, want %q", got, tc.input)
			}
			if r.irq.high() {
				t.Error("interrupt still raised after draining")
			}
			r.expect(regIIR, tc.wantIIR&iirFIFO|iirNoInt, "IIR drained")
		})
	}
}

func TestFIFOTriggerLevel(t *testing.T) {
	r := newRig(t)
	r.out(regIIR, 0x81) // FIFO on, trigger 8
	r.out(regIER, ierRDI)
	r.u.Input([]byte("1234567"))
	r.expect(regIIR, iirFIFO|iirCTI, "7 bytes, trigger 8")
	r.u.Input([]byte("8"))
	r.expect(regIIR, iirFIFO|iirRDI, "8 bytes, trigger 8")
	r.in(regRBR)
	r.expect(regIIR, iirFIFO|iirCTI, "7 bytes left")
	r.out(regIIR, 0x83) // clear the receive FIFO
	r.expect(regLSR, lsrTHRE|lsrTEMT, "LSR after FIFO clear")
	if r.irq.high() {
		t.Error("interrupt raised after FIFO clear")
	}
}

func TestInputWaitsForGuest(t *testing.T) {
	r := newRig(t)
	r.out(regIIR, 0x01)
	in := bytes.Repeat([]byte("0123456789"), 10)
	r.u.Input(in)
	var got []byte
	for r.in(regLSR)&lsrDR != 0 {
		got = append(got, r.in(regRBR))
	}
	if !bytes.Equal(got, in) {
		t.Errorf("guest read %q, want %q", got, in)
	}
	if in, _ := r.u.Dropped(); in != 0 {
		t.Errorf("dropped %d bytes", in)
	}
}

func TestInputOverflow(t *testing.T) {
	r := newRig(t)
	r.out(regIER, ierRLSI)
	r.u.Input(make([]byte, MaxPending+1+10))
	if in, _ := r.u.Dropped(); in != 11 {
		t.Errorf("dropped %d bytes, want 11 (1 went into RBR)", in)
	}
	r.expect(regIIR, iirRLSI, "IIR after overrun")
	r.expect(regLSR, lsrDR|lsrOE|lsrTHRE|lsrTEMT, "LSR after overrun")
	r.expect(regLSR, lsrDR|lsrTHRE|lsrTEMT, "LSR read clears OE")
	r.expect(regIIR, iirNoInt, "IIR after LSR read")
}

func TestLoopback(t *testing.T) {
	r := newRig(t)
	r.out(regMCR, mcrLoop|mcrOUT2|mcrRTS)
	// Linux's 8250 autoconfig: MCR = LOOP|OUT2|RTS must read back as
	// DCD|CTS in the MSR status bits.
	if got := r.in(regMSR) & 0xf0; got != msrDCD|msrCTS {
		t.Errorf("MSR in loopback = %#02x, want %#02x", got, msrDCD|msrCTS)
	}
	r.u.Input([]byte("h")) // the line is disconnected in loopback
	r.out(regRBR, 'x')
	r.expect(regLSR, lsrDR|lsrTHRE|lsrTEMT, "LSR after looped byte")
	r.expect(regRBR, 'x', "looped byte")
	r.out(regRBR, 'y')
	r.out(regRBR, 'z') // no FIFO: the holding register overruns
	r.expect(regLSR, lsrDR|lsrOE|lsrTHRE|lsrTEMT, "LSR after loopback overrun")
	r.expect(regRBR, 'y', "first looped byte kept")
	if r.host.Len() != 0 {
		t.Errorf("loopback leaked %q to the host", r.host.String())
	}
	r.out(regMCR, mcrOUT2)
	r.expect(regRBR, 'h', "host input after loopback ends")
	if got := r.in(regMSR); got != msrDCD|msrDSR|msrCTS|msrDDSR {
		t.Errorf("MSR after loopback = %#02x, want DCD|DSR|CTS|DDSR", got)
	}
	if got := r.in(regMSR); got != msrDCD|msrDSR|msrCTS {
		t.Errorf("MSR read did not clear deltas: %#02x", got)
	}
}

func TestDivisorLatch(t *testing.T) {
	r := newRig(t)
	r.out(regIER, 0x05)
	r.out(regLCR, lcrDLAB|0x03)
	r.out(regRBR, 0x0c)
	r.out(regIER, 0x01)
	r.expect(regRBR, 0x0c, "DLL")
	r.expect(regIER, 0x01, "DLM")
	r.out(regLCR, 0x03)
	r.expect(regIER, 0x05, "IER behind the latch")
	r.expect(regLCR, 0x03, "LCR")
	if r.host.Len() != 0 {
		t.Errorf("DLL write transmitted %q", r.host.String())
	}
	r.out(regSCR, 0xa5)
	r.expect(regSCR, 0xa5, "SCR")
	r.out(regIER, 0xff)
	r.expect(regIER, 0x0f, "IER reserved bits")
}

func TestTHREInterrupt(t *testing.T) {
	r := newRig(t)
	r.out(regIER, ierTHRI)
	if !r.irq.high() || r.irq.edges() != 1 {
		t.Fatalf("enabling THRI with THR empty: line %v, %d edges", r.irq.high(), r.irq.edges())
	}
	r.expect(regIIR, iirTHRI, "IIR reports THRE")
	if r.irq.high() {
		t.Error("reading IIR did not acknowledge THRE")
	}
	r.expect(regIIR, iirNoInt, "IIR after acknowledge")
	r.out(regRBR, 'a')
	if !r.irq.high() || r.irq.edges() != 2 {
		t.Errorf("THR write: line %v, %d edges, want a second edge", r.irq.high(), r.irq.edges())
	}
	r.out(regRBR, 'b') // without acknowledging: the line must still pulse
	if r.irq.edges() != 3 {
		t.Errorf("THR write with THRE pending: %d edges, want 3", r.irq.edges())
	}
	// Linux's THRE test (serial8250_do_startup): toggling IER re-raises.
	r.expect(regIIR, iirTHRI, "IIR")
	r.out(regIER, 0)
	r.out(regIER, ierTHRI)
	r.expect(regIIR, iirTHRI, "IIR after IER toggle")
}

func TestPriorities(t *testing.T) {
	r := newRig(t)
	r.out(regMCR, mcrLoop)
	r.out(regIER, 0x0f)
	r.out(regMCR, mcrLoop|mcrRTS) // CTS changes: modem status
	r.out(regRBR, 'a')
	r.out(regRBR, 'b') // overrun
	for _, want := range []byte{iirRLSI, iirRDI, iirTHRI, iirMSI, iirNoInt} {
		r.expect(regIIR, want, "priority order")
		switch want {
		case iirRLSI:
			r.in(regLSR)
		case iirRDI:
			r.in(regRBR)
		case iirMSI:
			r.in(regMSR)
		}
	}
}

// TestLinuxProbe replays the register sequence of Linux's 8250 autoconfig
// and the checks of serial8250_do_startup.
func TestLinuxProbe(t *testing.T) {
	r := newRig(t)
	// Scratch test through IER.
	r.out(regIER, 0)
	r.expect(regIER, 0, "IER cleared")
	r.out(regIER, 0x0f)
	r.expect(regIER, 0x0f, "IER set")
	r.out(regIER, 0)
	// Loopback test.
	r.out(regMCR, mcrLoop|0x0a)
	if got := r.in(regMSR) & 0xf0; got != msrDCD|msrCTS {
		t.Fatalf("loopback MSR = %#02x", got)
	}
	r.out(regMCR, 0)
	// FIFO detection: IIR bits 7:6 = 11 means 16550A.
	r.out(regIIR, fcrEnable)
	if got := r.in(regIIR) >> 6; got != 3 {
		t.Fatalf("IIR>>6 after FCR enable = %d, want 3", got)
	}
	// Not an ST16C650 (EFR at LCR 0xbf reads non-zero IIR) nor a 16750
	// (no 64-byte FIFO bit in IIR).
	r.out(regLCR, 0xbf)
	if r.in(regIIR) == 0 {
		t.Error("EFR probe read 0: Linux would take this for a 16650")
	}
	r.out(regLCR, 0)
	r.out(regIIR, fcrEnable|0x20)
	if got := r.in(regIIR) >> 5; got != 6 {
		t.Errorf("IIR>>5 with 64-byte FIFO bit = %d, want 6", got)
	}
	// THRE test: the interrupt is re-asserted when IER.THRI is toggled.
	r.out(regIER, ierTHRI)
	iir1 := r.in(regIIR)
	r.out(regIER, 0)
	r.out(regIER, ierTHRI)
	iir := r.in(regIIR)
	r.out(regIER, 0)
	if iir1&iirNoInt != 0 || iir&iirNoInt != 0 {
		t.Errorf("THRE test: iir1 %#02x iir %#02x; Linux would flag UART_BUG_THRE", iir1, iir)
	}
}

// reentrant is a host writer that calls back into the UART it serves.
type reentrant struct {
	u   *UART
	got []byte
}

func (w *reentrant) Write(p []byte) (int, error) {
	w.got = append(w.got, p...)
	w.u.Input(p)                       // echo back
	w.u.Read(regLSR, []byte{0})        // look at the registers
	w.u.Write(regSCR, []byte{p[0]})    // and write one
	if len(w.got) < 3 && p[0] != '!' { // and even transmit
		w.u.Write(regRBR, []byte{'!'})
	}
	return len(p), nil
}

func TestWriterMayCallBack(t *testing.T) {
	w := &reentrant{}
	w.u = New(nil, w)
	w.u.Write(regIIR, []byte{fcrEnable})
	w.u.Write(regRBR, []byte{'a'})
	if string(w.got) != "a!" {
		t.Errorf("host got %q, want %q", w.got, "a!")
	}
}

// blocking is a host writer that blocks until released.
type blocking struct {
	entered, release chan struct{}
	buf              bytes.Buffer
}

func (w *blocking) Write(p []byte) (int, error) {
	if w.entered != nil {
		close(w.entered)
		w.entered = nil
		<-w.release
	}
	return w.buf.Write(p)
}

func TestSlowWriterDoesNotBlockOthers(t *testing.T) {
	entered := make(chan struct{})
	w := &blocking{entered: entered, release: make(chan struct{})}
	u := New(nil, w)
	done := make(chan struct{})
	go func() {
		u.Write(regRBR, []byte{'a'})
		close(done)
	}()
	<-entered
	// The first vCPU is stuck in the writer; another still gets service
	// and its output is queued behind, in order.
	u.Write(regRBR, []byte{'b'})
	u.Input([]byte("z"))
	b := []byte{0}
	u.Read(regRBR, b)
	if b[0] != 'z' {
		t.Errorf("RBR = %q, want 'z'", b[0])
	}
	close(w.release)
	<-done
	if got := w.buf.String(); got != "ab" {
		t.Errorf("host got %q, want %q", got, "ab")
	}
}

func TestConcurrentAccess(t *testing.T) {
	var host lockedBuffer
	u := New(func(bool) {}, &host)
	u.Write(regIIR, []byte{0xc1})
	u.Write(regIER, []byte{0x0f})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				u.Write(regRBR, []byte{byte('a' + g)})
				u.Read(uint64(i%Size), []byte{0})
				u.Input([]byte{byte(i)})
			}
		}()
	}
	wg.Wait()
	if n := host.len(); n != 4000 {
		t.Errorf("host got %d bytes, want 4000", n)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

func TestSaveRestore(t *testing.T) {
	r := newRig(t)
	r.out(regLCR, lcrDLAB)
	r.out(regRBR, 0x01)
	r.out(regLCR, 0x03)
	r.out(regIIR, 0x81)
	r.out(regIER, 0x0f)
	r.out(regSCR, 0x42)
	r.u.Input(bytes.Repeat([]byte("x"), 40))
	r.in(regRBR)

	fresh := &line{}
	restored := New(fresh.set, io.Discard)
	s := devtest.RoundTrip(t, r.u, restored)
	if len(s.RX) != fifoSize || len(s.Pending) != 40-1-fifoSize {
		t.Errorf("saved %d FIFO and %d pending bytes", len(s.RX), len(s.Pending))
	}
	if !fresh.high() {
		t.Error("restore did not raise the pending interrupt")
	}
	// The restored UART carries on where the original was.
	var got []byte
	for {
		b := []byte{0, 0}
		restored.Read(regRBR, b[:1])
		restored.Read(regLSR, b[1:])
		got = append(got, b[0])
		if b[1]&lsrDR == 0 {
			break
		}
	}
	if len(got) != 39 {
		t.Errorf("restored UART delivered %d bytes, want 39", len(got))
	}
	devtest.RoundTrip(t, restored, restored)
}

func TestRestoreRejectsBadState(t *testing.T) {
	for _, s := range []State{
		{IER: 0x10},
		{RX: make([]byte, 2)},
		{FCR: 1, RX: make([]byte, 17)},
		{Pending: make([]byte, MaxPending+1)},
	} {
		if err := New(nil, nil).Restore(s); err == nil {
			t.Errorf("Restore(%+v) accepted", s)
		}
	}
}

func TestWidths(t *testing.T) {
	r := newRig(t)
	// A 2-byte write at SCR-1 writes MSR (ignored) and SCR.
	r.u.Write(regMSR, []byte{0xff, 0x5a})
	r.expect(regSCR, 0x5a, "SCR via wide write")
	b := []byte{0, 0, 0, 0}
	r.u.Read(regSCR-1, b)
	if !slices.Equal(b, []byte{msrDCD | msrDSR | msrCTS, 0x5a, 0xff, 0xff}) {
		t.Errorf("wide read = % x", b)
	}
}

func FuzzUART(f *testing.F) {
	f.Add([]byte{1, 2, 0xc1, 0, 0, 0, 1, 1, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > devtest.MaxFuzzInput {
			return
		}
		u := New(func(bool) {}, io.Discard)
		u.Input(b)
		devtest.Drive(u, Size, b)
		devtest.RoundTrip(t, u, New(nil, nil))
	})
}
