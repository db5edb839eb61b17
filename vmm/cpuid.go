package vmm

import "github.com/sfvmm/sfvmm/vmm/kvm"

// CPUID leaves and bits sfvmm adjusts.
const (
	leafFeatures     = 0x1
	leafTopology     = 0xb
	leafTopologyV2   = 0x1f
	leafHypervisor   = 0x40000000
	ecxHypervisor    = 1 << 31
	ebxAPICIDShift   = 24
	ebxLogicalShift  = 16
	edxHTT           = 1 << 28
	kvmFeaturesLeaf  = 0x40000001
	kvmSignatureEBX  = 0x4b4d564b // "KVMK"
	kvmMaxHypervLeaf = kvmFeaturesLeaf
)

// cpuidFor returns the CPUID table of vCPU id: what KVM supports, with
// the vCPU's APIC ID, the vCPU count, and the hypervisor bit that lets the
// guest find KVM's paravirtual leaves (kvmclock).
func cpuidFor(supported []kvm.CPUIDEntry, id, cpus int) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, len(supported))
	copy(out, supported)
	for i := range out {
		e := &out[i]
		switch e.Function {
		case leafFeatures:
			e.EBX = e.EBX&0x0000ffff | uint32(id)<<ebxAPICIDShift | uint32(cpus)<<ebxLogicalShift
			e.ECX |= ecxHypervisor
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
