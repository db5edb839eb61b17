package vmm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/vmm/devices"
	"github.com/sfvmm/sfvmm/vmm/disk"
	"github.com/sfvmm/sfvmm/vmm/kvm"
)

// MachineState is everything a guest can observe except its memory: the
// plain-data value a snapshot descriptor holds.
type MachineState struct {
	Config  MachineConfig
	VCPUs   []VCPUState
	VM      VMState
	Devices devices.States
	// Disks are the frozen disks a fork's clones or a snapshot's
	// restore open, one per Config.Devices.Disks; SaveState leaves them
	// to the fork or snapshot (FreezeDisks, copyDisks).
	Disks []disk.State
}

// MachineConfig is the configuration a restored machine is rebuilt with.
type MachineConfig struct {
	CPUs     uint32
	MemBytes uint64
	Kernel   string // for people reading the descriptor; not reloaded
	Cmdline  string // also what fw_cfg serves
	Devices  devices.Options
}

// VCPUState is one vCPU's complete KVM state.
type VCPUState struct {
	ID        uint32
	CPUID     []kvm.CPUIDEntry
	MPState   uint32
	Regs      kvm.Regs
	Sregs     kvm.Sregs
	XSave     []byte
	XCRs      kvm.XCRs
	DebugRegs kvm.DebugRegs
	LAPIC     kvm.LAPIC
	MSRs      []kvm.MSREntry
	Events    kvm.VCPUEvents
	TSCKHz    uint32
}

// VMState is the state of KVM's in-kernel devices.
type VMState struct {
	PICMaster, PICSlave, IOAPIC kvm.IRQChip
	PIT                         kvm.PITState2
	Clock                       kvm.ClockData
}

// SaveState captures the machine's state. A hold must be in force (see
// Hold), and for the state to match guest memory it must last until the
// memory has been captured too.
func (m *VM) SaveState() (*MachineState, error) {
	m.mu.Lock()
	held := m.held()
	m.mu.Unlock()
	if !held {
		return nil, fmt.Errorf("save state: %w", ErrNotHeld)
	}
	s := &MachineState{Config: MachineConfig{
		CPUs: uint32(m.cfg.CPUs), MemBytes: m.mem.Size(), Kernel: m.cfg.KernelPath, Cmdline: m.cfg.Cmdline,
		Devices: m.cfg.Devices,
	}}
	msrs, err := saveableMSRs(m.sys)
	if err != nil {
		return nil, err
	}
	xsaveSize := m.sys.XSaveSize()
	for _, c := range m.vcpus {
		vs, err := c.save(msrs, xsaveSize)
		if err != nil {
			return nil, fmt.Errorf("save vcpu %d: %w", c.ID, err)
		}
		s.VCPUs = append(s.VCPUs, vs)
	}
	if s.VM, err = m.saveVM(); err != nil {
		return nil, fmt.Errorf("save vm: %w", err)
	}
	if s.Devices, err = m.devs.Save(); err != nil {
		return nil, err
	}
	return s, nil
}

// Hyper-V's synthetic MSRs, which KVM lists as saveable but a guest can
// only use when shown Hyper-V's CPUID leaves; sfvmm shows KVM's, so these
// hold nothing of the guest's and are left out.
const hypervMSRFirst, hypervMSRLast = 0x40000000, 0x400001ff

// saveableMSRs is KVM's MSR index list less the MSRs no sfvmm guest uses.
func saveableMSRs(sys *kvm.System) ([]uint32, error) {
	all, err := sys.MSRIndexList()
	if err != nil {
		return nil, err
	}
	var out []uint32
	for _, i := range all {
		if i < hypervMSRFirst || i > hypervMSRLast {
			out = append(out, i)
		}
	}
	return out, nil
}

// save reads the vCPU's state. MP_STATE comes first: reading it makes KVM
// process pending INIT/SIPI events, which changes the other registers.
func (c *vcpu) save(msrIndices []uint32, xsaveSize int) (s VCPUState, err error) {
	s.ID = uint32(c.ID)
	s.CPUID = append([]kvm.CPUIDEntry(nil), c.cpuid...)
	steps := []struct {
		name string
		fn   func() error
	}{
		{"get mp state", func() (err error) { s.MPState, err = c.GetMPState(); return }},
		{"get regs", func() (err error) { s.Regs, err = c.GetRegs(); return }},
		{"get sregs", func() (err error) { s.Sregs, err = c.GetSregs(); return }},
		{"get xsave", func() (err error) { s.XSave, err = c.GetXSave(xsaveSize); return }},
		{"get xcrs", func() (err error) { s.XCRs, err = c.GetXCRs(); return }},
		{"get debug regs", func() (err error) { s.DebugRegs, err = c.GetDebugRegs(); return }},
		{"get lapic", func() (err error) { s.LAPIC, err = c.GetLAPIC(); return }},
		{"get msrs", func() (err error) { s.MSRs, err = c.GetMSRs(msrIndices); return }},
		{"get vcpu events", func() (err error) { s.Events, err = c.GetVCPUEvents(); return }},
		{"get tsc khz", func() (err error) { s.TSCKHz, err = c.GetTSCKHz(); return }},
	}
	for _, st := range steps {
		if err := st.fn(); err != nil {
			return s, fmt.Errorf("%s: %w", st.name, err)
		}
	}
	return s, nil
}

// restore writes the vCPU's state in the order KVM needs (Firecracker's
// vcpu.rs explains each constraint):
//   - the TSC frequency before anything that reads the TSC;
//   - REGS before VCPU_EVENTS, since setting RFLAGS can drop an interrupt
//     shadow;
//   - SREGS before LAPIC, since SREGS sets the APIC base that locates it;
//   - LAPIC before MSRS, since the TSC-deadline MSR needs the LAPIC timer
//     mode already set;
//   - VCPU_EVENTS last, so nothing above clears a pending event.
func (c *vcpu) restore(s VCPUState) error {
	if amd(c.cpuid) && s.Sregs.TR.Type == tssBusy64 {
		// KVM on AMD reports TR as busy whatever the VMCB holds
		// (svm_get_segment: the CPU does not expose the busy bit, so
		// the VMCB keeps the type the guest's LTR loaded, available).
		// Put back as busy, TR differs from what the guest had; real
		// CPUs ignore that, but QEMU's TCG, the nested sandbox's CPU,
		// then faults every port access a TSS I/O bitmap (ioperm)
		// allows. So TR goes back as the hardware held it.
		s.Sregs.TR.Type = tssAvailable64
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"set tsc khz", func() error { return c.setTSCKHz(s.TSCKHz) }},
		{"set mp state", func() error { return c.SetMPState(s.MPState) }},
		{"set regs", func() error { return c.SetRegs(s.Regs) }},
		{"set sregs", func() error { return c.SetSregs(s.Sregs) }},
		{"set xsave", func() error { return c.SetXSave(s.XSave) }},
		{"set xcrs", func() error { return c.SetXCRs(s.XCRs) }},
		{"set debug regs", func() error { return c.SetDebugRegs(s.DebugRegs) }},
		{"set lapic", func() error { return c.SetLAPIC(s.LAPIC) }},
		{"set msrs", func() error { return c.SetMSRs(s.MSRs) }},
		{"set vcpu events", func() error { return c.SetVCPUEvents(s.Events) }},
	}
	for _, st := range steps {
		if err := st.fn(); err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
	}
	// Tell the guest's kvmclock it was paused (no soft-lockup warnings);
	// EINVAL only means the guest does not use kvmclock.
	if err := c.KVMClockCtrl(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("kvmclock ctrl: %w", err)
	}
	return nil
}

// TSS descriptor types (SDM vol. 3, 3.5).
const (
	tssAvailable64 = 9
	tssBusy64      = 11
)

// amd reports whether a CPUID table is an AMD (or Hygon) CPU's.
func amd(cpuid []kvm.CPUIDEntry) bool {
	for _, e := range cpuid {
		if e.Function == 0 && e.Index == 0 {
			return e.EBX == 0x68747541 || e.EBX == 0x6f677948 // "Auth", "Hygo"
		}
	}
	return false
}

// setTSCKHz keeps the guest's TSC frequency; a host that cannot scale to it
// refuses, which is reported rather than letting guest time run wrong.
func (c *vcpu) setTSCKHz(khz uint32) error {
	cur, err := c.GetTSCKHz()
	if err != nil || cur == khz || khz == 0 {
		return err
	}
	if err := c.SetTSCKHz(khz); err != nil {
		return fmt.Errorf("guest TSC runs at %d kHz, host at %d kHz and cannot scale: %w", khz, cur, err)
	}
	return nil
}

func (m *VM) saveVM() (s VMState, err error) {
	if s.PICMaster, err = m.kvm.GetIRQChip(kvm.IRQChipPICMaster); err != nil {
		return s, err
	}
	if s.PICSlave, err = m.kvm.GetIRQChip(kvm.IRQChipPICSlave); err != nil {
		return s, err
	}
	if s.IOAPIC, err = m.kvm.GetIRQChip(kvm.IRQChipIOAPIC); err != nil {
		return s, err
	}
	if s.PIT, err = m.kvm.GetPIT2(); err != nil {
		return s, err
	}
	s.Clock, err = m.kvm.GetClock()
	return s, err
}

func (m *VM) restoreVM(s VMState) error {
	if err := m.kvm.SetPIT2(s.PIT); err != nil {
		return err
	}
	// Only the clock value carries over; the flags described the old host.
	if err := m.kvm.SetClock(kvm.ClockData{Clock: s.Clock.Clock}); err != nil {
		return err
	}
	for _, c := range []kvm.IRQChip{s.PICMaster, s.PICSlave, s.IOAPIC} {
		if err := m.kvm.SetIRQChip(c); err != nil {
			return err
		}
	}
	return nil
}
