package vmm

import "github.com/sfvmm/sfvmm/vmm/kvm"

// CPUID leaves and bits sfvmm adjusts.
const (
	leafFeatures    = 0x1
	leafTopology    = 0xb
	leafTopologyV2  = 0x1f
	leafHypervisor  = 0x40000000
	ecxHypervisor   = 1 << 31
	ecxTSCDeadline  = 1 << 24
	ebxAPICIDShift  = 24
	ebxLogicalShift = 16
	edxHTT          = 1 << 28
	kvmFeaturesLeaf = 0x40000001
	// KVM_FEATURE_ASYNC_PF, _ASYNC_PF_VMEXIT and _ASYNC_PF_INT: hidden.
	// With asynchronous page faults KVM turns a vCPU's fault on a page
	// the host lacks into "page not present" and "page ready" events for
	// the guest, and fetches the page from a kernel worker. For a clone
	// every first touch is such a fault, filled by memtap: each would
	// cost the guest two extra events, and in the nested sandbox a
	// 16-clone fork soft-locked the host kernel in KVM's delivery of
	// them (kvm_arch_async_page_present, for minutes). Without them the
	// faulting vCPU simply waits for its page.
	kvmAsyncPF       = 1<<4 | 1<<10 | 1<<14
	kvmSignatureEBX  = 0x4b4d564b // "KVMK"
	kvmMaxHypervLeaf = kvmFeaturesLeaf
)

// cpuidFor returns the CPUID table of vCPU id: what KVM supports (less
// asynchronous page faults), with the vCPU's APIC ID, the vCPU count, the
// hypervisor bit that lets the guest find KVM's paravirtual leaves
// (kvmclock), and the TSC-deadline timer
// where the in-kernel LAPIC emulates it (KVM_GET_SUPPORTED_CPUID leaves that
// bit out because it depends on the irqchip; QEMU sets it the same way).
// Without it Linux must calibrate the LAPIC timer against the PIT, which a
// loaded host can make fail ("APIC timer disabled due to verification
// failure"), and falls back to slower timer paths.
func cpuidFor(supported []kvm.CPUIDEntry, id, cpus int, tscDeadline bool) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, len(supported))
	copy(out, supported)
	for i := range out {
		e := &out[i]
		switch e.Function {
		case leafFeatures:
			e.EBX = e.EBX&0x0000ffff | uint32(id)<<ebxAPICIDShift | uint32(cpus)<<ebxLogicalShift
			e.ECX |= ecxHypervisor
			if tscDeadline {
				e.ECX |= ecxTSCDeadline
			}
			if cpus > 1 {
				e.EDX |= edxHTT
			}
		case leafTopology, leafTopologyV2:
			e.EDX = uint32(id) // x2APIC ID
		case leafHypervisor:
			if e.EBX == kvmSignatureEBX && e.EAX < kvmMaxHypervLeaf {
				e.EAX = kvmMaxHypervLeaf
			}
		case kvmFeaturesLeaf:
			e.EAX &^= kvmAsyncPF
		}
	}
	return out
}
