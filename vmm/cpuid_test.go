package vmm

import (
	"testing"

	"github.com/sfvmm/sfvmm/vmm/kvm"
)

func TestCPUIDHidesAsyncPageFaults(t *testing.T) {
	supported := []kvm.CPUIDEntry{
		{Function: leafHypervisor, EBX: kvmSignatureEBX},
		{Function: kvmFeaturesLeaf, EAX: 0xffff_ffff},
	}
	for _, e := range cpuidFor(supported, 0, 1, true) {
		if e.Function == kvmFeaturesLeaf && (e.EAX&kvmAsyncPF != 0 || e.EAX|kvmAsyncPF != 0xffff_ffff) {
			t.Errorf("KVM features %#x: want every supported one but asynchronous page faults", e.EAX)
		}
	}
}
