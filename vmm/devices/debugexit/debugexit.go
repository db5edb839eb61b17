// Package debugexit emulates QEMU's isa-debug-exit device, through which
// test kernels end the VM with an exit status: a write of value v exits
// with status (v<<1)|1, so a guest can never produce status 0 (which would
// be indistinguishable from a clean shutdown). sfvmm registers it where CI
// images expect it, port 0xf4 with 4 ports (QEMU's
// "-device isa-debug-exit,iobase=0xf4,iosize=0x04").
//
// It is not a shutdown device: the VMM decides what exiting means.
package debugexit

// Conventional placement, matching the QEMU command line test images use.
const (
	Port = 0xf4
	Size = 4
)

// Device is an isa-debug-exit port. It has no state, so concurrent calls
// need no locking.
type Device struct {
	exit func(code int)
}

// New returns a device that calls exit with the status the guest asks for.
// exit may be called from several vCPU goroutines at once.
func New(exit func(code int)) *Device {
	if exit == nil {
		exit = func(int) {}
	}
	return &Device{exit: exit}
}

// Read returns all ones, as an unclaimed port would.
func (d *Device) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
}

// Write exits with status (v<<1)|1, v being the little-endian value
// written. As in QEMU, any 1-, 2- or 4-byte write in the range counts,
// whatever its offset; other widths are not valid I/O and are ignored.
func (d *Device) Write(offset uint64, data []byte) {
	switch len(data) {
	case 1, 2, 4:
	default:
		return
	}
	var v uint64
	for i := len(data) - 1; i >= 0; i-- {
		v = v<<8 | uint64(data[i])
	}
	d.exit(int(v<<1 | 1))
}

// State is the device's saved state: there is none, but the device takes
// part in snapshots like every other.
type State struct{}

// Save returns the (empty) state.
func (d *Device) Save() (State, error) { return State{}, nil }

// Restore accepts the (empty) state.
func (d *Device) Restore(State) error { return nil }
