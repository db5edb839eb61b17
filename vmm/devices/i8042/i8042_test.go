package i8042

import (
	"errors"
	"testing"

	"github.com/sfvmm/sfvmm/vmm/bus"
	"github.com/sfvmm/sfvmm/vmm/devices/devtest"
)

var errTimeout = errors.New("timeout")

// host drives the controller the way Linux's __i8042_command does: wait for
// IBF clear, write the command and its parameters, then wait (bounded) for
// each response byte.
type host struct {
	data, cmd bus.Device
}

func newHost(d *Device) host { return host{d.Data(), d.Command()} }

func (h host) status() byte {
	b := []byte{0}
	h.cmd.Read(0, b)
	return b[0]
}

func (h host) read() byte {
	b := []byte{0}
	h.data.Read(0, b)
	return b[0]
}

// command sends c with params and collects n response bytes; aux reports
// whether each response was flagged as AUX data.
func (h host) command(c byte, params []byte, n int) (resp []byte, aux []bool, err error) {
	if h.status()&stsIBF != 0 {
		return nil, nil, errTimeout
	}
	h.cmd.Write(0, []byte{c})
	for _, p := range params {
		if h.status()&stsIBF != 0 {
			return nil, nil, errTimeout
		}
		h.data.Write(0, []byte{p})
	}
	for range n {
		st := h.status()
		if st&stsOBF == 0 {
			return resp, aux, errTimeout // a real driver would spin 500 ms
		}
		aux = append(aux, st&stsAux != 0)
		resp = append(resp, h.read())
	}
	return resp, aux, nil
}

func (h host) one(t *testing.T, c byte, params ...byte) byte {
	t.Helper()
	r, _, err := h.command(c, params, 1)
	if err != nil {
		t.Fatalf("command %#02x: %v", c, err)
	}
	return r[0]
}

func TestCommands(t *testing.T) {
	tests := []struct {
		name   string
		cmd    byte
		params []byte
		want   byte
	}{
		{"self test", cmdSelfTest, nil, 0x55},
		{"keyboard test", cmdKbdTest, nil, 0x00},
		{"AUX test", cmdAuxTest, nil, 0x00},
		{"read command byte", cmdReadRAM, nil, ctrReset},
		{"read output port", cmdReadOut, nil, outReset | outA20},
		{"keyboard output buffer", cmdWriteKbdOB, []byte{0x1c}, 0x1c},
		{"AUX loopback", cmdWriteAuxOB, []byte{0x5a}, 0x5a},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(New(nil))
			if got := h.one(t, tc.cmd, tc.params...); got != tc.want {
				t.Errorf("response %#02x, want %#02x", got, tc.want)
			}
			if st := h.status(); st&stsOBF != 0 {
				t.Errorf("status %#02x: output buffer still full", st)
			}
		})
	}
}

func TestReset(t *testing.T) {
	tests := []struct {
		name   string
		cmd    byte
		params []byte
		reset  bool
	}{
		{"pulse reset line", 0xfe, nil, true},
		{"pulse reset and others", 0xf0, nil, true},
		{"pulse nothing", 0xff, nil, false},
		{"pulse another line", 0xfd, nil, false},
		{"output port reset low", cmdWriteOut, []byte{0x00}, true},
		{"output port A20", cmdWriteOut, []byte{0xdf}, false},
		{"self test", cmdSelfTest, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resets := 0
			h := newHost(New(func() { resets++ }))
			if _, _, err := h.command(tc.cmd, tc.params, 0); err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 1}[tc.reset]; resets != want {
				t.Errorf("%d resets, want %d", resets, want)
			}
		})
	}
}

func TestCommandByte(t *testing.T) {
	h := newHost(New(nil))
	h.command(cmdWriteRAM, []byte{0x47}, 0)
	if got := h.one(t, cmdReadRAM); got != 0x47|ctrAuxDis {
		t.Errorf("command byte %#02x, want %#02x", got, 0x47|ctrAuxDis)
	}
	h.command(cmdKbdDisable, nil, 0)
	if got := h.one(t, cmdReadRAM); got&ctrKbdDis == 0 {
		t.Errorf("0xad left command byte %#02x", got)
	}
	h.command(cmdKbdEnable, nil, 0)
	if got := h.one(t, cmdReadRAM); got&ctrKbdDis != 0 {
		t.Errorf("0xae left command byte %#02x", got)
	}
	h.command(cmdWriteRAM+5, []byte{0x99}, 0)
	if got := h.one(t, cmdReadRAM+5); got != 0x99 {
		t.Errorf("RAM byte 5 = %#02x", got)
	}
	if st := h.status(); st&(stsUnlocked|stsSys|stsCmd) != stsUnlocked|stsSys|stsCmd {
		t.Errorf("status %#02x lacks keylock-off, system flag or command bits", st)
	}
}

func TestKeyboardBytesSwallowed(t *testing.T) {
	h := newHost(New(nil))
	h.data.Write(0, []byte{0xf2}) // atkbd's GETID, to a keyboard that is absent
	if st := h.status(); st&stsOBF != 0 {
		t.Errorf("status %#02x after a keyboard byte: a stale response would confuse the next command", st)
	}
	if got := h.one(t, cmdSelfTest); got != selfTestOK {
		t.Errorf("self test after keyboard byte = %#02x", got)
	}
}

// TestLinuxProbe replays Linux's i8042_controller_check, _selftest, _init
// and i8042_check_aux, and checks the driver ends with a controller, a
// keyboard port and no AUX port, without any command timing out.
func TestLinuxProbe(t *testing.T) {
	h := newHost(New(func() { t.Error("reset during probe") }))
	// i8042_flush: nothing pending.
	if h.status()&stsOBF != 0 {
		t.Fatal("output buffer full at power-on: i8042_flush would drain")
	}
	if got := h.one(t, cmdSelfTest); got != selfTestOK {
		t.Fatalf("self test %#02x", got)
	}
	// Stable command byte, then keyboard disabled and its interrupt off.
	c1, c2 := h.one(t, cmdReadRAM), h.one(t, cmdReadRAM)
	if c1 != c2 {
		t.Fatalf("unstable command byte %#02x/%#02x", c1, c2)
	}
	if h.status()&stsUnlocked == 0 {
		t.Error("keylock reported active")
	}
	h.command(cmdWriteRAM, []byte{(c1 | ctrKbdDis) &^ ctrKbdInt}, 0)

	// i8042_check_aux: loopback passes with AUX data flagged...
	r, aux, err := h.command(cmdWriteAuxOB, []byte{0x5a}, 1)
	if err != nil || r[0] != 0x5a || !aux[0] {
		t.Fatalf("AUX loop: %x %v %v", r, aux, err)
	}
	// ... and the bit-assignment test fails: AUX stays disabled.
	h.command(cmdAuxDisable, nil, 0)
	if h.one(t, cmdReadRAM)&ctrAuxDis == 0 {
		t.Fatal("AUX disable not reflected")
	}
	h.command(cmdAuxEnable, nil, 0)
	if h.one(t, cmdReadRAM)&ctrAuxDis == 0 {
		t.Fatal("AUX enable took effect: Linux would go on to a 250 ms AUX IRQ test")
	}
	// i8042_enable_kbd_port.
	ctr := h.one(t, cmdReadRAM)
	h.command(cmdWriteRAM, []byte{(ctr &^ ctrKbdDis) | ctrKbdInt}, 0)
	if got := h.one(t, cmdReadRAM); got&ctrKbdDis != 0 || got&ctrKbdInt == 0 {
		t.Errorf("keyboard port not enabled: %#02x", got)
	}
}

func TestWidths(t *testing.T) {
	h := newHost(New(nil))
	b := []byte{0, 0, 0, 0}
	h.cmd.Read(0, b)
	if b[0]&stsUnlocked == 0 || b[1] != 0xff || b[3] != 0xff {
		t.Errorf("4-byte status read % x", b)
	}
	h.cmd.Write(0, nil)
	h.data.Read(0, nil)
}

func TestSaveRestore(t *testing.T) {
	d := New(nil)
	h := newHost(d)
	h.cmd.Write(0, []byte{cmdSelfTest})
	h.cmd.Write(0, []byte{cmdWriteOut})
	fresh := New(nil)
	devtest.RoundTrip(t, d, fresh)
	// The restored controller still has the self-test answer and the
	// pending output port write.
	fh := newHost(fresh)
	if got := fh.read(); got != selfTestOK {
		t.Errorf("restored output buffer %#02x", got)
	}
	fh.data.Write(0, []byte{0x01})
	if got := fh.one(t, cmdReadOut); got != 0x01 {
		t.Errorf("restored pending command lost: output port %#02x", got)
	}
	for _, s := range []State{{}, {RAM: [32]byte{ctrAuxDis}, PendingCommand: cmdSelfTest}} {
		if err := New(nil).Restore(s); err == nil {
			t.Errorf("Restore(%+v) accepted", s)
		}
	}
}

func FuzzI8042(f *testing.F) {
	f.Add([]byte{1, 0, 0xd1, 0, 0, 0, 1, 0, 0x00, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > devtest.MaxFuzzInput {
			return
		}
		d := New(func() {})
		half := len(b) / 2
		devtest.Drive(d.Command(), 1, b[:half])
		devtest.Drive(d.Data(), 1, b[half:])
		devtest.RoundTrip(t, d, New(nil))
	})
}
