package rtc

import (
	"sync"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/vmm/devices/devtest"
)

// fakeClock is a host clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var start = time.Date(2024, time.March, 5, 13, 7, 9, 500_000_000, time.UTC) // a Tuesday

func newRTC(t time.Time) (*RTC, *fakeClock) {
	c := &fakeClock{t: t}
	return New(c.now, 256<<20), c
}

func get(r *RTC, reg byte) byte {
	r.Write(0, []byte{reg})
	b := []byte{0}
	r.Read(1, b)
	return b[0]
}

func set(r *RTC, reg, v byte) {
	r.Write(0, []byte{reg})
	r.Write(1, []byte{v})
}

var timeRegs = []struct {
	name string
	reg  byte
}{
	{"sec", regSec}, {"min", regMin}, {"hour", regHour}, {"dow", regDOW},
	{"day", regDOM}, {"month", regMonth}, {"year", regYear}, {"century", regCentury},
}

func TestTimeFormats(t *testing.T) {
	tests := []struct {
		name string
		b    byte
		at   time.Time
		want [8]byte // sec min hour dow day month year century
	}{
		{"BCD 24h", b24h, start, [8]byte{0x09, 0x07, 0x13, 3, 0x05, 0x03, 0x24, 0x20}},
		{"binary 24h", b24h | bBinary, start, [8]byte{9, 7, 13, 3, 5, 3, 24, 20}},
		{"BCD 12h PM", 0, start, [8]byte{0x09, 0x07, 0x81, 3, 0x05, 0x03, 0x24, 0x20}},
		{"binary 12h midnight", bBinary, time.Date(1999, 12, 31, 0, 59, 59, 0, time.UTC),
			[8]byte{59, 59, 12, 6, 31, 12, 99, 19}},
		{"BCD 12h noon", 0, time.Date(2099, 1, 1, 12, 0, 0, 0, time.UTC),
			[8]byte{0, 0, 0x92, 5, 0x01, 0x01, 0x99, 0x20}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newRTC(tc.at)
			set(r, regB, tc.b)
			for i, tr := range timeRegs {
				if got := get(r, tr.reg); got != tc.want[i] {
					t.Errorf("%s = %#02x, want %#02x", tr.name, got, tc.want[i])
				}
			}
		})
	}
}

func TestClockRuns(t *testing.T) {
	r, c := newRTC(start)
	c.advance(61 * time.Second)
	if s, m := get(r, regSec), get(r, regMin); s != 0x10 || m != 0x08 {
		t.Errorf("after 61 s: %02x:%02x, want 08:10", m, s)
	}
}

func TestSetTime(t *testing.T) {
	r, c := newRTC(start)
	// Linux's mc146818_set_time: SET, fields, clear SET.
	set(r, regB, b24h|bSet)
	for _, w := range []struct{ reg, v byte }{
		{regYear, 0x30}, {regMonth, 0x02}, {regDOM, 0x28}, {regHour, 0x23},
		{regMin, 0x59}, {regSec, 0x58}, {regCentury, 0x20},
	} {
		set(r, w.reg, w.v)
	}
	c.advance(5 * time.Second) // frozen while SET is on
	if got := get(r, regSec); got != 0x58 {
		t.Errorf("seconds moved while SET: %#02x", got)
	}
	set(r, regB, b24h)
	c.advance(3 * time.Second)
	want := [8]byte{0x01, 0x00, 0x00, 0x06, 0x01, 0x03, 0x30, 0x20} // Fri 2030-03-01 00:00:01
	for i, tr := range timeRegs {
		if got := get(r, tr.reg); got != want[i] {
			t.Errorf("%s = %#02x, want %#02x", tr.name, got, want[i])
		}
	}
}

func TestWriteOneField(t *testing.T) {
	r, c := newRTC(start)
	set(r, regB, b24h|bBinary)
	set(r, regMin, 30)
	c.advance(time.Second)
	if h, m, s := get(r, regHour), get(r, regMin), get(r, regSec); h != 13 || m != 30 || s != 10 {
		t.Errorf("time %d:%d:%d, want 13:30:10", h, m, s)
	}
}

func TestUIP(t *testing.T) {
	tests := []struct {
		name string
		frac time.Duration
		b    byte
		a    byte
		uip  bool
	}{
		{"mid-second", 500 * time.Millisecond, b24h, aReset, false},
		{"just before the update", time.Second - 100*time.Microsecond, b24h, aReset, true},
		{"before the hold window", time.Second - 300*time.Microsecond, b24h, aReset, false},
		{"SET stops updates", time.Second - 100*time.Microsecond, b24h | bSet, aReset, false},
		{"divider in reset", time.Second - 100*time.Microsecond, b24h, 0x76, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newRTC(time.Date(2024, 1, 1, 0, 0, 0, int(tc.frac), time.UTC))
			set(r, regA, tc.a)
			set(r, regB, tc.b)
			if got := get(r, regA)&aUIP != 0; got != tc.uip {
				t.Errorf("UIP = %v, want %v", got, tc.uip)
			}
			if got := get(r, regA) &^ aUIP; got != tc.a {
				t.Errorf("register A = %#02x, want %#02x", got, tc.a)
			}
		})
	}
}

// TestLinuxReadLoopTerminates replays mc146818_avoid_UIP starting inside
// the UIP window, with each port access taking 1 µs of host time.
func TestLinuxReadLoopTerminates(t *testing.T) {
	r, c := newRTC(time.Date(2024, 1, 1, 0, 0, 0, int(time.Second-200*time.Microsecond), time.UTC))
	read := func(reg byte) byte {
		c.advance(time.Microsecond)
		return get(r, reg)
	}
	for i := range 100 {
		sec := read(regSec)
		if read(regA)&aUIP != 0 {
			c.advance(100 * time.Microsecond) // udelay(100)
			continue
		}
		if read(regA)&aUIP == 0 && sec == read(regSec) {
			if i == 0 {
				t.Error("loop never saw UIP")
			}
			return
		}
	}
	t.Fatal("read loop did not terminate in 100 iterations")
}

func TestMemoryBytes(t *testing.T) {
	const mib, gib = 1 << 20, 1 << 30
	tests := []struct {
		name string
		ram  uint64
		want map[byte]byte
	}{
		{"512 KiB", 512 << 10, map[byte]byte{0x15: 0x00, 0x16: 0x02, 0x17: 0, 0x18: 0, 0x34: 0, 0x35: 0}},
		{"32 MiB", 32 * mib, map[byte]byte{
			0x15: 0x80, 0x16: 0x02, // 640 KiB
			0x17: 0x00, 0x18: 0x7c, 0x30: 0x00, 0x31: 0x7c, // 31 MiB in KiB
			0x34: 0x00, 0x35: 0x01, // 16 MiB in 64 KiB units
			0x5b: 0, 0x5c: 0, 0x5d: 0,
		}},
		{"128 MiB", 128 * mib, map[byte]byte{
			0x17: 0xff, 0x18: 0xff, // capped at 64 MiB
			0x34: 0x00, 0x35: 0x07, // 112 MiB in 64 KiB units
		}},
		{"8 GiB", 8 * gib, map[byte]byte{
			0x17: 0xff, 0x18: 0xff, 0x30: 0xff, 0x31: 0xff, // capped
			0x34: 0x00, 0x35: 0xbf, // 3 GiB - 16 MiB
			0x5b: 0x00, 0x5c: 0x40, 0x5d: 0x01, // 5 GiB above 4 GiB in 64 KiB units
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := New(nil, tc.ram)
			for reg, want := range tc.want {
				if got := get(r, reg); got != want {
					t.Errorf("CMOS %#02x = %#02x, want %#02x", reg, got, want)
				}
			}
			var sum uint16
			for i := byte(0x10); i < 0x2e; i++ {
				sum += uint16(get(r, i))
			}
			if got := uint16(get(r, 0x2e))<<8 | uint16(get(r, 0x2f)); got != sum {
				t.Errorf("checksum %#04x, want %#04x", got, sum)
			}
		})
	}
}

func TestRegisters(t *testing.T) {
	r, _ := newRTC(start)
	if got := get(r, regD); got != dVRT {
		t.Errorf("register D = %#02x, want VRT", got)
	}
	set(r, regB, b24h|0x70) // enable every interrupt: nothing breaks
	if got := get(r, regC); got != 0 {
		t.Errorf("register C = %#02x", got)
	}
	set(r, 0x40, 0xab)
	r.Write(0, []byte{0x80 | 0x40}) // NMI masked, same register
	b := []byte{0}
	r.Read(1, b)
	if b[0] != 0xab {
		t.Errorf("CMOS RAM 0x40 = %#02x through an NMI-masking index", b[0])
	}
	r.Read(0, b)
	if b[0] != 0xff {
		t.Errorf("index port read %#02x, want 0xff", b[0])
	}
	// outw 0x70: index in the low byte, data in the high.
	r.Write(0, []byte{0x41, 0x5a})
	if got := get(r, 0x41); got != 0x5a {
		t.Errorf("16-bit write left %#02x", got)
	}
}

func TestSaveRestore(t *testing.T) {
	r, c := newRTC(start)
	set(r, regB, b24h|bSet)
	set(r, regYear, 0x42)
	set(r, 0x50, 0x77)
	r.Write(0, []byte{0x80 | regSec})
	fresh := New(c.now, 0)
	s := devtest.RoundTrip(t, r, fresh)
	if !s.NMIDisabled || s.Frozen.Year != 2042 {
		t.Errorf("saved %+v", s)
	}
	set(fresh, regB, b24h)
	if got := get(fresh, regYear); got != 0x42 {
		t.Errorf("restored year %#02x", got)
	}
	devtest.RoundTrip(t, fresh, fresh)
	if err := New(nil, 0).Restore(State{Index: 0x80}); err == nil {
		t.Error("Restore accepted index 0x80")
	}
}

func FuzzRTC(f *testing.F) {
	f.Add([]byte{1, 0, 0x0b, 0, 0, 0, 1, 1, 0x86, 0, 0, 0, 1, 0, 0x09, 0, 0, 0, 1, 1, 0xff, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > devtest.MaxFuzzInput {
			return
		}
		r, _ := newRTC(start)
		devtest.Drive(r, Size, b)
		devtest.RoundTrip(t, r, New(nil, 0))
	})
}
