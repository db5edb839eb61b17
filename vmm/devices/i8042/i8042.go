// Package i8042 emulates the PC keyboard controller just far enough for
// two jobs: Linux's i8042 driver probes it quickly and without hanging, and
// a guest can reset the machine through it (command 0xFE, Linux's
// "reboot=k" and the fallback of most other reboot methods).
//
// It is not a keyboard or mouse: no device is attached to either port, and
// the controller raises no interrupts. Bytes the guest sends to the
// keyboard are swallowed (the driver's keyboard probe then times out on
// its own thread, not during boot). There is no AUX (mouse) port: its
// disable bit in the command byte reads as 1 whatever the guest writes.
// That is how Linux's i8042_check_aux bit-assignment test concludes at once
// that no AUX port exists, instead of spending 250 ms waiting for an AUX
// interrupt that cannot come.
//
// The controller occupies two non-adjacent ports, so the Device hands out
// one bus.Device per port: Data (0x60) and Command (0x64, status on read).
package i8042

import (
	"fmt"
	"sync"

	"github.com/sfvmm/sfvmm/vmm/bus"
)

// Ports the controller is registered at, one byte each.
const (
	DataPort    = 0x60
	CommandPort = 0x64
)

// Status register bits.
const (
	stsOBF      = 0x01 // output buffer full
	stsIBF      = 0x02 // input buffer full: never, commands complete at once
	stsSys      = 0x04 // system flag, mirrors the command byte
	stsCmd      = 0x08 // the last write was to the command port
	stsUnlocked = 0x10 // keyboard not inhibited by the keylock
	stsAux      = 0x20 // the output buffer holds AUX data
)

// Command byte (controller RAM byte 0) bits.
const (
	ctrKbdInt = 0x01
	ctrSys    = 0x04
	ctrKbdDis = 0x10
	ctrAuxDis = 0x20
	ctrXlate  = 0x40

	// ctrReset is the command byte firmware leaves behind: translation on,
	// POST passed, keyboard interrupt enabled, AUX disabled.
	ctrReset = ctrXlate | ctrAuxDis | ctrSys | ctrKbdInt
)

// Controller commands (written to the command port).
const (
	cmdReadRAM    = 0x20 // 0x20-0x3f: read RAM byte cmd&0x1f (0x20: command byte)
	cmdWriteRAM   = 0x60 // 0x60-0x7f: write RAM byte cmd&0x1f
	cmdAuxDisable = 0xa7
	cmdAuxEnable  = 0xa8
	cmdAuxTest    = 0xa9
	cmdSelfTest   = 0xaa
	cmdKbdTest    = 0xab
	cmdKbdDisable = 0xad
	cmdKbdEnable  = 0xae
	cmdReadOut    = 0xd0
	cmdWriteOut   = 0xd1
	cmdWriteKbdOB = 0xd2 // next data byte appears as if from the keyboard
	cmdWriteAuxOB = 0xd3 // next data byte appears as if from the AUX port
	cmdWriteAux   = 0xd4 // next data byte goes to the AUX device
	cmdPulse      = 0xf0 // 0xf0-0xff: pulse output lines whose bit is 0

	selfTestOK = 0x55
	outReset   = 0x01 // output port bit 0: the CPU reset line, active low
	outA20     = 0x02
)

// Device is the controller.
type Device struct {
	reset func() // called without mu held

	mu      sync.Mutex // guards the fields below
	ram     [32]byte   // controller RAM; ram[0] is the command byte
	outPort byte
	obuf    byte // output buffer (what a data port read returns)
	obFull  bool
	obAux   bool
	param   byte // command waiting for its parameter byte; 0 if none
	lastCmd bool // the last write was to the command port
}

// New returns a controller in its power-on state that calls reset when the
// guest pulses the CPU reset line. reset may be called from any vCPU
// goroutine.
func New(reset func()) *Device {
	if reset == nil {
		reset = func() {}
	}
	d := &Device{reset: reset, outPort: outReset | outA20}
	d.ram[0] = ctrReset
	return d
}

// Data returns the device for the data port (0x60).
func (d *Device) Data() bus.Device { return dataPort{d} }

// Command returns the device for the command/status port (0x64).
func (d *Device) Command() bus.Device { return commandPort{d} }

type dataPort struct{ d *Device }
type commandPort struct{ d *Device }

// Read returns the output buffer, emptying it. Reading an empty buffer
// returns the last byte again, as the hardware does.
func (p dataPort) Read(offset uint64, data []byte) {
	if offset != 0 {
		fill(data, 0xff)
		return
	}
	d := p.d
	d.mu.Lock()
	v := d.obuf
	d.obFull, d.obAux = false, false
	d.mu.Unlock()
	fill(data, v)
}

// Write passes a parameter byte to the pending command, or a byte to the
// keyboard (there is none, so it is dropped).
func (p dataPort) Write(offset uint64, data []byte) {
	if offset != 0 || len(data) == 0 {
		return
	}
	d := p.d
	v := data[0]
	d.mu.Lock()
	d.lastCmd = false
	cmd := d.param
	d.param = 0
	doReset := false
	switch {
	case cmd >= cmdWriteRAM && cmd < cmdWriteRAM+0x20:
		d.ram[cmd&0x1f] = v
		d.ram[0] |= ctrAuxDis // no AUX port
	case cmd == cmdWriteOut:
		d.outPort = v
		doReset = v&outReset == 0
	case cmd == cmdWriteKbdOB:
		d.output(v, false)
	case cmd == cmdWriteAuxOB:
		d.output(v, true)
	}
	// cmdWriteAux and plain keyboard bytes: no device to receive them.
	d.mu.Unlock()
	if doReset {
		d.reset()
	}
}

// Read returns the status register.
func (p commandPort) Read(offset uint64, data []byte) {
	if offset != 0 {
		fill(data, 0xff)
		return
	}
	d := p.d
	d.mu.Lock()
	st := byte(stsUnlocked)
	if d.obFull {
		st |= stsOBF
		if d.obAux {
			st |= stsAux
		}
	}
	if d.ram[0]&ctrSys != 0 {
		st |= stsSys
	}
	if d.lastCmd {
		st |= stsCmd
	}
	d.mu.Unlock()
	fill(data, st)
}

// Write executes a controller command. Unknown commands are ignored.
func (p commandPort) Write(offset uint64, data []byte) {
	if offset != 0 || len(data) == 0 {
		return
	}
	d := p.d
	cmd := data[0]
	d.mu.Lock()
	d.lastCmd = true
	d.param = 0 // a new command abandons one still waiting for its byte
	doReset := false
	switch {
	case cmd >= cmdReadRAM && cmd < cmdReadRAM+0x20:
		d.output(d.ram[cmd&0x1f], false)
	case cmd >= cmdWriteRAM && cmd < cmdWriteRAM+0x20,
		cmd == cmdWriteOut, cmd == cmdWriteKbdOB, cmd == cmdWriteAuxOB, cmd == cmdWriteAux:
		d.param = cmd
	case cmd == cmdAuxDisable, cmd == cmdAuxEnable:
		d.ram[0] |= ctrAuxDis // no AUX port: it stays disabled
	case cmd == cmdAuxTest, cmd == cmdKbdTest:
		d.output(0x00, false) // interface OK
	case cmd == cmdSelfTest:
		d.output(selfTestOK, false)
	case cmd == cmdKbdDisable:
		d.ram[0] |= ctrKbdDis
	case cmd == cmdKbdEnable:
		d.ram[0] &^= ctrKbdDis
	case cmd == cmdReadOut:
		d.output(d.outPort, false)
	case cmd >= cmdPulse:
		doReset = cmd&outReset == 0 // 0xfe pulses the reset line
	}
	d.mu.Unlock()
	if doReset {
		d.reset()
	}
}

// output puts v in the output buffer, replacing whatever was there.
func (d *Device) output(v byte, aux bool) {
	d.obuf, d.obFull, d.obAux = v, true, aux
}

// fill answers an access of any width: the register in the first byte,
// all ones beyond it (the neighbouring ports are not the controller's).
// Each port is one byte wide; an access at any other offset reads all ones
// and writes nothing.
func fill(data []byte, v byte) {
	for i := range data {
		data[i] = 0xff
	}
	if len(data) > 0 {
		data[0] = v
	}
}

// State is the controller's saved state.
type State struct {
	RAM            [32]byte
	OutPort        uint8
	Out            uint8
	OutFull        bool
	OutAux         bool
	PendingCommand uint8 // command waiting for its parameter byte; 0 if none
	LastWasCommand bool
}

// Save returns the controller's state.
func (d *Device) Save() (State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return State{
		RAM: d.ram, OutPort: d.outPort,
		Out: d.obuf, OutFull: d.obFull, OutAux: d.obAux,
		PendingCommand: d.param, LastWasCommand: d.lastCmd,
	}, nil
}

// Restore replaces the controller's state with s.
func (d *Device) Restore(s State) error {
	switch c := s.PendingCommand; {
	case c == 0, c >= cmdWriteRAM && c < cmdWriteRAM+0x20, c >= cmdWriteOut && c <= cmdWriteAux:
	default:
		return fmt.Errorf("restore i8042: command %#02x takes no parameter", c)
	}
	if s.RAM[0]&ctrAuxDis == 0 {
		return fmt.Errorf("restore i8042: command byte %#02x enables the AUX port, which does not exist", s.RAM[0])
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ram, d.outPort = s.RAM, s.OutPort
	d.obuf, d.obFull, d.obAux = s.Out, s.OutFull, s.OutAux
	d.param, d.lastCmd = s.PendingCommand, s.LastWasCommand
	return nil
}
