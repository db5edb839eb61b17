package vmm

import "github.com/sfvmm/sfvmm/vmm/kvm"

// CPUID leaves and bits sfvmm adjusts.
const (
	leafFeatures     = 0x1
	leafTopology     = 0xb
	leafTopologyV2   = 0x1f
	leafHypervisor   = 0x40000000
	ecxHypervisor    = 1 << 31
	ecxTSCDeadline   = 1 << 24
	ebxAPICIDShift   = 24
	ebxLogicalShift  = 16
	edxHTT           = 1 << 28
	kvmFeaturesLeaf  = 0x40000001
	kvmSignatureEBX  = 0x4b4d564b // "KVMK"
	kvmMaxHypervLeaf = kvmFeaturesLeaf
)

// cpuidFor returns the CPUID table of vCPU id: what KVM supports, with
// the vCPU's APIC ID, the vCPU count, the hypervisor bit that lets the
// guest find KVM's paravirtual leaves (kvmclock), and the TSC-deadline timer
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
		}
	}
	return out
}
