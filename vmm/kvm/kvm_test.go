package kvm

import (
	"testing"
	"unsafe"
)

// The layouts must match <linux/kvm.h> byte for byte; the sizes and the
// ioctl numbers below are the kernel's own.
func TestLayouts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(DTable{}), 16},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), 312},
		{"kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry{}), 40},
		{"kvm_userspace_memory_region", unsafe.Sizeof(UserspaceMemoryRegion{}), 32},
		{"kvm_lapic_state", unsafe.Sizeof(LAPIC{}), 1024},
		{"kvm_msr_entry", unsafe.Sizeof(MSREntry{}), 16},
		{"kvm_vcpu_events", unsafe.Sizeof(VCPUEvents{}), 64},
		{"kvm_debugregs", unsafe.Sizeof(DebugRegs{}), 128},
		{"kvm_xcrs", unsafe.Sizeof(XCRs{}), 392},
		{"kvm_irqchip", unsafe.Sizeof(IRQChip{}), 520},
		{"kvm_pit_state2", unsafe.Sizeof(PITState2{}), 112},
		{"kvm_clock_data", unsafe.Sizeof(ClockData{}), 48},
	} {
		if tc.got != tc.want {
			t.Errorf("sizeof %s = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestIoctlNumbers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"KVM_RUN", reqRun, 0xae80},
		{"KVM_GET_REGS", reqGetRegs, 0x8090ae81},
		{"KVM_SET_SREGS", reqSetSregs, 0x4138ae84},
		{"KVM_SET_USER_MEMORY_REGION", reqSetUserMemRegion, 0x4020ae46},
		{"KVM_SET_CPUID2", reqSetCPUID2, 0x4008ae90},
		{"KVM_GET_SUPPORTED_CPUID", reqGetSupportedCPUID, 0xc008ae05},
		{"KVM_GET_LAPIC", reqGetLAPIC, 0x8400ae8e},
		{"KVM_IRQ_LINE", reqIRQLine, 0x4008ae61},
		{"KVM_CREATE_PIT2", reqCreatePIT2, 0x4040ae77},
		{"KVM_GET_STATS_FD", reqGetStatsFD, 0xaece},
		{"KVM_GET_VCPU_EVENTS", reqGetVCPUEvents, 0x8040ae9f},
		{"KVM_SET_VCPU_EVENTS", reqSetVCPUEvents, 0x4040aea0},
		{"KVM_GET_PIT2", reqGetPIT2, 0x8070ae9f},
		{"KVM_GET_IRQCHIP", reqGetIRQChip, 0xc208ae62},
		{"KVM_SET_IRQCHIP", reqSetIRQChip, 0x8208ae63},
		{"KVM_GET_XSAVE", reqGetXSave, 0x9000aea4},
		{"KVM_GET_XCRS", reqGetXCRs, 0x8188aea6},
		{"KVM_GET_CLOCK", reqGetClock, 0x8030ae7c},
		{"KVM_GET_DEBUGREGS", reqGetDebugRegs, 0x8080aea1},
		{"KVM_GET_MSRS", reqGetMSRs, 0xc008ae88},
		{"KVM_SIGNAL_MSI", reqSignalMSI, 0x4020aea5},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
}

func TestIOEventFDLayout(t *testing.T) {
	if n := unsafe.Sizeof(ioeventfd{}); n != 64 {
		t.Errorf("kvm_ioeventfd is %d bytes, want 64", n)
	}
}
