package vmm

import (
	"fmt"
	"sort"
	"strings"

	"github.com/sfvmm/sfvmm/vmm/kvm"
	"github.com/sfvmm/sfvmm/vmm/memory"
)

// ResidentGuestBytes counts the guest RAM pages present in host memory:
// the memory the guest (or the loader) has touched.
func (m *VM) ResidentGuestBytes() (uint64, error) {
	_, bitmaps, err := m.Populated()
	if err != nil {
		return 0, err
	}
	var pages uint64
	for _, bm := range bitmaps {
		pages += bm.Count()
	}
	return pages * memory.PageSize, nil
}

// ExitStats summarises the vCPUs' exits to the VMM: the cost a guest's
// device accesses put on it, and how virtio notifications came (Notify:
// with NotifyExit each is an exit). Call it after Run has returned.
func (m *VM) ExitStats() string {
	reasons := map[uint32]uint64{}
	ports := map[uint16]uint64{}
	var eintr uint64
	for _, c := range m.vcpus {
		for r, n := range c.exits {
			reasons[r] += n
		}
		for p, n := range c.ioPorts {
			ports[p] += n
		}
		eintr += c.eintr
	}
	type kv struct {
		port uint16
		n    uint64
	}
	var top []kv
	for p, n := range ports {
		top = append(top, kv{p, n})
	}
	sort.Slice(top, func(i, j int) bool { return top[i].n > top[j].n })
	var b strings.Builder
	fmt.Fprintf(&b, "exits: io=%d mmio=%d hlt=%d interrupted=%d other=%d (virtio notifications: %s); busiest ports:",
		reasons[kvm.ExitIO], reasons[kvm.ExitMMIO], reasons[kvm.ExitHLT], eintr,
		sum(reasons)-reasons[kvm.ExitIO]-reasons[kvm.ExitMMIO]-reasons[kvm.ExitHLT], m.Notify())
	for i, t := range top {
		if i == 8 {
			break
		}
		fmt.Fprintf(&b, " %#x=%d", t.port, t.n)
	}
	return b.String()
}

func sum(m map[uint32]uint64) (n uint64) {
	for _, v := range m {
		n += v
	}
	return n
}

// KVMStats is the vCPUs' KVM statistics (kvm.VCPU.Stats), each summed over
// the vCPUs: the exits KVM handled itself as well as those it passed to
// sfvmm ("exits"), its stage-2 (EPT/NPT) page faults ("pf_taken"), and
// so on, as the host kernel names them. Call it after Run has returned.
func (m *VM) KVMStats() (map[string]uint64, error) {
	total := map[string]uint64{}
	for _, c := range m.vcpus {
		s, err := c.Stats()
		if err != nil {
			return nil, fmt.Errorf("vcpu %d: %w", c.ID, err)
		}
		for k, v := range s {
			total[k] += v
		}
	}
	return total, nil
}

// kvmStatsShown are the KVM statistics FormatKVMStats reports, where the host
// kernel has them.
var kvmStatsShown = []string{"exits", "pf_taken", "halt_exits", "irq_exits", "io_exits", "mmio_exits"}

// FormatKVMStats lists the statistics of kvmStatsShown that s has.
func FormatKVMStats(s map[string]uint64) string {
	var parts []string
	for _, k := range kvmStatsShown {
		if v, ok := s[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=%d", k, v))
		}
	}
	return strings.Join(parts, " ")
}
