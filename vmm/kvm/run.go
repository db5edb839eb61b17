package kvm

import "unsafe"

// RunData is the vCPU's shared kvm_run page. Its fields are read and
// written by the vCPU's own thread, except ImmediateExit, which another
// thread sets to kick the vCPU out of KVM_RUN.
type RunData struct {
	b []byte
}

// Offsets into struct kvm_run.
const (
	runImmediateExit = 1
	runExitReason    = 8
	runUnion         = 32
)

func (r RunData) u8(off int) *uint8   { return (*uint8)(unsafe.Pointer(&r.b[off])) }
func (r RunData) u16(off int) *uint16 { return (*uint16)(unsafe.Pointer(&r.b[off])) }
func (r RunData) u32(off int) *uint32 { return (*uint32)(unsafe.Pointer(&r.b[off])) }
func (r RunData) u64(off int) *uint64 { return (*uint64)(unsafe.Pointer(&r.b[off])) }

// SetImmediateExit makes the next (or current, once signalled) KVM_RUN return
// EINTR at once.
func (r RunData) SetImmediateExit(on bool) {
	v := uint8(0)
	if on {
		v = 1
	}
	// A plain store: the kernel reads it on entry and after a signal.
	*r.u8(runImmediateExit) = v
}

// ExitReason is run.exit_reason.
func (r RunData) ExitReason() uint32 { return *r.u32(runExitReason) }

// IO describes a port-I/O exit. Data is the window of the kvm_run page that
// holds Count accesses of Size bytes each; the bounds are checked so that a
// corrupt data_offset cannot reach outside the page.
func (r RunData) IO() (dir uint8, size uint8, port uint16, count uint32, data []byte, ok bool) {
	dir = *r.u8(runUnion)
	size = *r.u8(runUnion + 1)
	port = *r.u16(runUnion + 2)
	count = *r.u32(runUnion + 4)
	off := *r.u64(runUnion + 8)
	n := uint64(size) * uint64(count)
	if off > uint64(len(r.b)) || n > uint64(len(r.b))-off {
		return dir, size, port, count, nil, false
	}
	return dir, size, port, count, r.b[off : off+n], true
}

// MMIO describes an MMIO exit; Data is the access's bytes (len = access width).
func (r RunData) MMIO() (addr uint64, data []byte, write bool) {
	addr = *r.u64(runUnion)
	n := *r.u32(runUnion + 16)
	if n > 8 {
		n = 8
	}
	return addr, r.b[runUnion+8 : runUnion+8+int(n)], *r.u8(runUnion + 20) != 0
}

// HardwareEntryFailureReason is run.fail_entry.hardware_entry_failure_reason.
func (r RunData) HardwareEntryFailureReason() uint64 { return *r.u64(runUnion) }

// InternalSuberror is run.internal.suberror.
func (r RunData) InternalSuberror() uint32 { return *r.u32(runUnion) }

// SystemEventType is run.system_event.type.
func (r RunData) SystemEventType() uint32 { return *r.u32(runUnion) }
