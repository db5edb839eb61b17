package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
	"github.com/sfvmm/sfvmm/vmm/kvm"
	"github.com/sfvmm/sfvmm/vmm/memory"
)

// RestoreConfig is what a restored machine takes from its new host.
type RestoreConfig struct {
	Console io.Writer
	Log     *slog.Logger
	Fork    func(*VM) forkdev.Host // enables fork in the restored machine (Config.Fork)
	// DiskDir is where the state's relative disk layer paths are (a
	// snapshot's directory).
	DiskDir string
	// DiskSource, if set, reads layer j of disk d where the files are
	// out of reach (a clone on another host than its parent).
	DiskSource func(d, j int) (io.ReaderAt, error)
	// VsockPath and VsockDial are the restored machine's vsock sockets
	// (Config's).
	VsockPath, VsockDial string
	// KeepDisks, if set, is a directory where the machine leaves each
	// disk as it saw it when it closes (diskN.img): a clone's or restored
	// machine's writes are otherwise dropped with its overlay.
	KeepDisks string
	// Notify is Config's: the restored machine's host decides it.
	Notify Notify
}

// Restore rebuilds a machine from saved state. fill loads guest memory into
// the fresh RAM before any vCPU exists, or returns the source that will
// fill it as the guest touches it, which the machine then owns. The machine is created paused: Run
// continues the guest exactly where it was saved. Nothing is started if the
// state is inconsistent or needs CPU features this host lacks.
func Restore(s *MachineState, fill func(*memory.Memory) (MemorySource, error), rc RestoreConfig) (_ *VM, err error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if !rc.Notify.valid() {
		return nil, fmt.Errorf("unknown notification mode %v", rc.Notify)
	}
	m := newVM(Config{
		KernelPath: s.Config.Kernel, Cmdline: s.Config.Cmdline,
		CPUs: int(s.Config.CPUs), MemBytes: s.Config.MemBytes,
		Console: rc.Console, Log: rc.Log, Fork: rc.Fork, Devices: s.Config.Devices, VsockPath: rc.VsockPath, VsockDial: rc.VsockDial,
		Notify: rc.Notify,
	})
	m.keepDisks = rc.KeepDisks
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if m.sys, err = kvm.Open(); err != nil {
		return nil, err
	}
	if err := m.checkHost(s); err != nil {
		return nil, err
	}
	if m.mem, err = memory.New(s.Config.MemBytes); err != nil {
		return nil, err
	}
	if err := m.restoreDisks(s, rc); err != nil {
		return nil, err
	}
	if m.source, err = fill(m.mem); err != nil {
		return nil, fmt.Errorf("load guest memory: %w", err)
	}
	if err := m.createVM(); err != nil {
		return nil, err
	}
	for _, vs := range s.VCPUs {
		c, err := m.newVCPU(int(vs.ID), vs.CPUID)
		if err != nil {
			return nil, fmt.Errorf("vcpu %d: %w", vs.ID, err)
		}
		m.vcpus = append(m.vcpus, c)
		if err := c.restore(vs); err != nil {
			return nil, fmt.Errorf("restore vcpu %d: %w", vs.ID, err)
		}
	}
	if err := m.restoreVM(s.VM); err != nil {
		return nil, fmt.Errorf("restore vm: %w", err)
	}
	if err := m.devs.Restore(s.Devices); err != nil {
		return nil, err
	}
	if g := m.devs.VMGenID; g != nil {
		// A clone or a restored snapshot is not the VM it was saved
		// from: the guest reseeds its random number generator.
		if err := g.NewGeneration(); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// check refuses state that is inconsistent in itself.
func (s *MachineState) check() error {
	c := s.Config
	switch {
	case c.CPUs < 1 || c.CPUs > MaxCPUs:
		return fmt.Errorf("state has %d vCPUs, want 1 to %d", c.CPUs, MaxCPUs)
	case int(c.CPUs) != len(s.VCPUs):
		return fmt.Errorf("state says %d vCPUs but holds %d", c.CPUs, len(s.VCPUs))
	case c.MemBytes < 1<<20 || c.MemBytes%memory.PageSize != 0 || c.MemBytes > memory.MaxSize:
		return fmt.Errorf("state has an invalid memory size of %d bytes", c.MemBytes)
	}
	if n := len(c.Devices.Disks); len(s.Disks) != n || len(s.Devices.Disks) != n {
		return fmt.Errorf("state has %d disks, %d frozen disks and %d disk devices", n, len(s.Disks), len(s.Devices.Disks))
	}
	for i, v := range s.VCPUs {
		if v.ID != uint32(i) {
			return fmt.Errorf("vcpu %d of the state has ID %d", i, v.ID)
		}
		if len(v.XSave) < 4096 {
			return fmt.Errorf("vcpu %d: XSAVE area of %d bytes, want at least 4096", i, len(v.XSave))
		}
	}
	return nil
}

// Feature registers compared between a saved CPUID and this host's.
var featureRegs = []struct {
	leaf, index uint32
	reg         string
	ignore      uint32 // bits sfvmm sets itself
}{
	{0x1, 0, "ecx", ecxHypervisor | ecxTSCDeadline},
	{0x1, 0, "edx", edxHTT},
	{0x7, 0, "ebx", 0},
	{0x7, 0, "ecx", 0},
	{0x7, 0, "edx", 0},
	{0xd, 1, "eax", 0},
	{0x80000001, 0, "ecx", 0},
	{0x80000001, 0, "edx", 0},
}

func cpuidReg(entries []kvm.CPUIDEntry, leaf, index uint32, reg string) (uint32, bool) {
	for _, e := range entries {
		if e.Function != leaf || (e.Flags&kvm.CPUIDFlagSignificantIndex != 0 && e.Index != index) {
			continue
		}
		switch reg {
		case "eax":
			return e.EAX, true
		case "ebx":
			return e.EBX, true
		case "ecx":
			return e.ECX, true
		default:
			return e.EDX, true
		}
	}
	return 0, false
}

// checkHost refuses state this host cannot run: CPU features the saved
// guest was shown but KVM here cannot offer, or a larger XSAVE area.
func (m *VM) checkHost(s *MachineState) error {
	host, err := m.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	var missing []string
	for _, f := range featureRegs {
		want, ok := cpuidReg(s.VCPUs[0].CPUID, f.leaf, f.index, f.reg)
		if !ok {
			continue
		}
		have, _ := cpuidReg(host, f.leaf, f.index, f.reg)
		if lack := want &^ have &^ f.ignore; lack != 0 {
			missing = append(missing, fmt.Sprintf("cpuid %#x.%d %s bits %#08x", f.leaf, f.index, f.reg, lack))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s", ErrCPUFeatures, strings.Join(missing, ", "))
	}
	if n := len(s.VCPUs[0].XSave); n > m.sys.XSaveSize() {
		return fmt.Errorf("%w: XSAVE area of %d bytes, host has %d", ErrCPUFeatures, n, m.sys.XSaveSize())
	}
	return nil
}

// ErrCPUFeatures says a saved guest needs CPU features this host lacks.
var ErrCPUFeatures = errors.New("the saved guest needs CPU features this host lacks")
