package kvm

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ioctls and layouts that save and restore a vCPU and the VM-wide
// in-kernel devices, for snapshots and fork.

var (
	reqGetMSRIndexList = iowr(0x02, 4)
	reqGetIRQChip      = iowr(0x62, sizeof[IRQChip]())
	reqSetIRQChip      = ior(0x63, sizeof[IRQChip]())
	reqSetClock        = iow(0x7b, sizeof[ClockData]())
	reqGetClock        = ior(0x7c, sizeof[ClockData]())
	reqGetMSRs         = iowr(0x88, 8)
	reqSetMPState      = iow(0x99, 4)
	reqGetPIT2         = ior(0x9f, sizeof[PITState2]())
	reqSetPIT2         = iow(0xa0, sizeof[PITState2]())
	reqGetVCPUEvents   = ior(0x9f, sizeof[VCPUEvents]())
	reqSetVCPUEvents   = iow(0xa0, sizeof[VCPUEvents]())
	reqGetDebugRegs    = ior(0xa1, sizeof[DebugRegs]())
	reqSetDebugRegs    = iow(0xa2, sizeof[DebugRegs]())
	reqSetTSCKHz       = io(0xa2)
	reqGetTSCKHz       = io(0xa3)
	reqGetXSave        = ior(0xa4, 4096)
	reqSetXSave        = iow(0xa5, 4096)
	reqGetXCRs         = ior(0xa6, sizeof[XCRs]())
	reqSetXCRs         = iow(0xa7, sizeof[XCRs]())
	reqKVMClockCtrl    = io(0xad)
	reqGetXSave2       = ior(0xcf, 4096)
)

// Capabilities used for saving state.
const (
	CapXSave2 = 208
)

// VCPUEvents is struct kvm_vcpu_events: pending and injected exceptions,
// interrupts, NMIs, SIPI and SMM state.
type VCPUEvents struct {
	ExceptionInjected, ExceptionNr, ExceptionHasErrorCode, ExceptionPending uint8
	ExceptionErrorCode                                                      uint32
	InterruptInjected, InterruptNr, InterruptSoft, InterruptShadow          uint8
	NMIInjected, NMIPending, NMIMasked, NMIPad                              uint8
	SIPIVector                                                              uint32
	Flags                                                                   uint32
	SMM, SMIPending, SMMInsideNMI, LatchedInit                              uint8
	TripleFaultPending                                                      uint8
	Reserved                                                                [26]uint8
	ExceptionHasPayload                                                     uint8
	ExceptionPayload                                                        uint64
}

// DebugRegs is struct kvm_debugregs.
type DebugRegs struct {
	DB       [4]uint64
	DR6, DR7 uint64
	Flags    uint64
	Reserved [9]uint64
}

// XCR is one extended control register (struct kvm_xcr).
type XCR struct {
	XCR      uint32
	Reserved uint32
	Value    uint64
}

// XCRs is struct kvm_xcrs.
type XCRs struct {
	NrXCRs  uint32
	Flags   uint32
	XCRs    [16]XCR
	Padding [16]uint64
}

// IRQChip is struct kvm_irqchip: one of the PICs or the IOAPIC, its state
// kept as the kernel's bytes.
type IRQChip struct {
	ChipID uint32
	Pad    uint32
	Chip   [512]byte
}

// IRQ chip IDs.
const (
	IRQChipPICMaster = 0
	IRQChipPICSlave  = 1
	IRQChipIOAPIC    = 2
)

// PITChannel is struct kvm_pit_channel_state.
type PITChannel struct {
	Count                               uint32
	LatchedCount                        uint16
	CountLatched, StatusLatched, Status uint8
	ReadState, WriteState, WriteLatch   uint8
	RWMode, Mode, BCD, Gate             uint8
	CountLoadTime                       int64 // host ktime: a clock value
}

// PITState2 is struct kvm_pit_state2.
type PITState2 struct {
	Channels [3]PITChannel
	Flags    uint32
	Reserved [9]uint32
}

// ClockData is struct kvm_clock_data: the VM's kvmclock.
type ClockData struct {
	Clock    uint64
	Flags    uint32
	Pad0     uint32
	Realtime uint64
	HostTSC  uint64
	Pad      [4]uint32
}

// MSRIndexList returns the MSRs KVM can save and restore for a vCPU.
func (s *System) MSRIndexList() ([]uint32, error) {
	n := uint32(0)
	_, err := ioctl(s.fd, reqGetMSRIndexList, unsafe.Pointer(&n))
	if err != nil && !errors.Is(err, unix.E2BIG) {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
	}
	buf := make([]uint32, 1+n)
	buf[0] = n
	if _, err := call(s.fd, "KVM_GET_MSR_INDEX_LIST", reqGetMSRIndexList, unsafe.Pointer(&buf[0])); err != nil {
		return nil, err
	}
	return buf[1 : 1+buf[0]], nil
}

// XSaveSize is the size of the vCPU XSAVE area this host's KVM reports
// (at least 4096, the legacy struct kvm_xsave).
func (s *System) XSaveSize() int {
	if n := s.CheckExtension(CapXSave2); n > 4096 {
		return n
	}
	return 4096
}

// GetIRQChip reads one in-kernel interrupt controller.
func (vm *VM) GetIRQChip(id uint32) (IRQChip, error) {
	c := IRQChip{ChipID: id}
	_, err := call(vm.fd, "KVM_GET_IRQCHIP", reqGetIRQChip, unsafe.Pointer(&c))
	return c, err
}

// SetIRQChip writes one in-kernel interrupt controller.
func (vm *VM) SetIRQChip(c IRQChip) error {
	_, err := call(vm.fd, "KVM_SET_IRQCHIP", reqSetIRQChip, unsafe.Pointer(&c))
	return err
}

// GetPIT2 reads the in-kernel PIT.
func (vm *VM) GetPIT2() (PITState2, error) {
	var p PITState2
	_, err := call(vm.fd, "KVM_GET_PIT2", reqGetPIT2, unsafe.Pointer(&p))
	return p, err
}

// SetPIT2 writes the in-kernel PIT.
func (vm *VM) SetPIT2(p PITState2) error {
	_, err := call(vm.fd, "KVM_SET_PIT2", reqSetPIT2, unsafe.Pointer(&p))
	return err
}

// GetClock reads the kvmclock.
func (vm *VM) GetClock() (ClockData, error) {
	var c ClockData
	_, err := call(vm.fd, "KVM_GET_CLOCK", reqGetClock, unsafe.Pointer(&c))
	return c, err
}

// SetClock sets the kvmclock. Only Clock (and, with the realtime flag,
// Realtime) is used by the kernel.
func (vm *VM) SetClock(c ClockData) error {
	_, err := call(vm.fd, "KVM_SET_CLOCK", reqSetClock, unsafe.Pointer(&c))
	return err
}

// GetMSRs reads the given MSRs. KVM stops at the first MSR it cannot read;
// GetMSRs skips such MSRs and returns the rest.
func (c *VCPU) GetMSRs(indices []uint32) ([]MSREntry, error) {
	var out []MSREntry
	for len(indices) > 0 {
		buf := make([]byte, 8+len(indices)*int(unsafe.Sizeof(MSREntry{})))
		*(*uint32)(unsafe.Pointer(&buf[0])) = uint32(len(indices))
		entries := unsafe.Slice((*MSREntry)(unsafe.Pointer(&buf[8])), len(indices))
		for i, idx := range indices {
			entries[i].Index = idx
		}
		n, err := call(c.fd, "KVM_GET_MSRS", reqGetMSRs, unsafe.Pointer(&buf[0]))
		if err != nil {
			return nil, err
		}
		out = append(out, entries[:n]...)
		if int(n) >= len(indices) {
			break
		}
		indices = indices[n+1:] // skip the MSR KVM refused
	}
	return out, nil
}

// SetMPState writes the multiprocessing state.
func (c *VCPU) SetMPState(s uint32) error {
	_, err := call(c.fd, "KVM_SET_MP_STATE", reqSetMPState, unsafe.Pointer(&s))
	return err
}

// GetVCPUEvents reads pending events.
func (c *VCPU) GetVCPUEvents() (VCPUEvents, error) {
	var e VCPUEvents
	_, err := call(c.fd, "KVM_GET_VCPU_EVENTS", reqGetVCPUEvents, unsafe.Pointer(&e))
	return e, err
}

// SetVCPUEvents writes pending events.
func (c *VCPU) SetVCPUEvents(e VCPUEvents) error {
	_, err := call(c.fd, "KVM_SET_VCPU_EVENTS", reqSetVCPUEvents, unsafe.Pointer(&e))
	return err
}

// GetDebugRegs reads DR0-3, DR6, DR7.
func (c *VCPU) GetDebugRegs() (DebugRegs, error) {
	var d DebugRegs
	_, err := call(c.fd, "KVM_GET_DEBUGREGS", reqGetDebugRegs, unsafe.Pointer(&d))
	return d, err
}

// SetDebugRegs writes DR0-3, DR6, DR7.
func (c *VCPU) SetDebugRegs(d DebugRegs) error {
	_, err := call(c.fd, "KVM_SET_DEBUGREGS", reqSetDebugRegs, unsafe.Pointer(&d))
	return err
}

// GetXSave reads the XSAVE area (FPU, SSE, AVX, ... state); size comes from
// System.XSaveSize.
func (c *VCPU) GetXSave(size int) ([]byte, error) {
	b := make([]byte, max(size, 4096))
	req := reqGetXSave
	if size > 4096 {
		req = reqGetXSave2
	}
	_, err := call(c.fd, "KVM_GET_XSAVE", req, unsafe.Pointer(&b[0]))
	return b, err
}

// SetXSave writes the XSAVE area.
func (c *VCPU) SetXSave(b []byte) error {
	if len(b) < 4096 {
		return fmt.Errorf("KVM_SET_XSAVE: area of %d bytes, want at least 4096", len(b))
	}
	_, err := call(c.fd, "KVM_SET_XSAVE", reqSetXSave, unsafe.Pointer(&b[0]))
	return err
}

// GetXCRs reads the extended control registers (XCR0).
func (c *VCPU) GetXCRs() (XCRs, error) {
	var x XCRs
	_, err := call(c.fd, "KVM_GET_XCRS", reqGetXCRs, unsafe.Pointer(&x))
	return x, err
}

// SetXCRs writes the extended control registers.
func (c *VCPU) SetXCRs(x XCRs) error {
	_, err := call(c.fd, "KVM_SET_XCRS", reqSetXCRs, unsafe.Pointer(&x))
	return err
}

// GetTSCKHz returns the vCPU's TSC frequency.
func (c *VCPU) GetTSCKHz() (uint32, error) {
	r, err := callValue(c.fd, "KVM_GET_TSC_KHZ", reqGetTSCKHz, 0)
	return uint32(r), err
}

// SetTSCKHz sets the vCPU's TSC frequency (scaled if the host's differs).
func (c *VCPU) SetTSCKHz(khz uint32) error {
	_, err := callValue(c.fd, "KVM_SET_TSC_KHZ", reqSetTSCKHz, uintptr(khz))
	return err
}

// KVMClockCtrl tells the guest's kvmclock that the vCPU was paused, so its
// soft-lockup watchdog does not fire. It fails with EINVAL when the guest
// has not enabled kvmclock, which callers may ignore.
func (c *VCPU) KVMClockCtrl() error {
	_, err := callValue(c.fd, "KVM_KVMCLOCK_CTRL", reqKVMClockCtrl, 0)
	return err
}
