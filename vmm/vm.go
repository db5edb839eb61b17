// Package vmm builds and runs a virtual machine on KVM: guest memory, the
// in-kernel interrupt controllers and PIT, vCPUs on their own OS threads,
// the I/O buses with the legacy devices, and a kernel loaded by vmm/boot.
//
// It is the machine, not the command line: cmd/sfvmm parses flags and turns
// an Exit into a process exit code. It saves and restores the machine's
// state (snapshots), holds its vCPUs for whoever needs them stopped (Hold),
// and fills a restored clone's RAM from a MemorySource; the fork core that
// uses all three is package vmm/fork, which vmm does not know.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/vmm/boot"
	"github.com/sfvmm/sfvmm/vmm/bus"
	"github.com/sfvmm/sfvmm/vmm/devices"
	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
	"github.com/sfvmm/sfvmm/vmm/disk"
	"github.com/sfvmm/sfvmm/vmm/kvm"
	"github.com/sfvmm/sfvmm/vmm/memory"
)

// Config describes a machine to boot.
type Config struct {
	KernelPath string
	// UnpackKernel has a bzImage's kernel unpacked on the host and booted
	// as the ELF vmlinux it holds: the guest skips its own decompression,
	// and with it KASLR. The unpacked kernel is kept in KernelCache, a
	// directory of the user's (boot.DefaultKernelCache), and reused while the
	// image is unchanged; with KernelCache "" it is unpacked on every boot.
	UnpackKernel bool
	KernelCache  string
	// InitrdPath is the initramfs of a bzImage, or for a multiboot kernel
	// QEMU's module list ("mod1 args,mod2").
	InitrdPath string
	Cmdline    string
	CPUs       int
	MemBytes   uint64
	// Console receives the guest's COM1 output; nil discards it.
	Console io.Writer
	// Log receives the VMM's messages; nil discards them. Accesses to
	// ports nothing claims (an ordinary Linux boot probes a dozen) are
	// debug-level.
	Log *slog.Logger
	// Fork connects the fork device to the fork core (package vmm/fork),
	// which gets the machine; nil answers the guest's fork calls with
	// SF_ENOFORK.
	Fork func(*VM) forkdev.Host
	// Devices are the optional devices.
	Devices devices.Options
	// VsockPath is the Unix socket through which host programs reach the
	// guest's vsock ports (Devices.VsockCID); "" is a new path in the
	// system's temporary directory, which the log names. The guest's
	// connections to port N of the host go to VsockDial_N ("":
	// VsockPath_N); a clone's go to its parent's.
	VsockPath, VsockDial string
	// Notify is how the guest's virtio queue notifications reach the
	// devices (NotifyAuto: as suits the host).
	Notify Notify
}

// MemorySource fills a clone's guest RAM from elsewhere (package memtap
// does, from the parent's memory server). The machine ends when it fails.
type MemorySource interface {
	// Done is closed when the source has failed; Err says why.
	Done() <-chan struct{}
	Err() error
	// Fence revokes access to guest RAM, waking threads blocked on
	// pages that will never come, so that the vCPUs can see the stop.
	Fence() error
	Close() error
}

// Addresses Intel VMX needs for real mode, just below the BIOS ROM.
const (
	tssAddr         = 0xfffbd000
	identityMapAddr = 0xfffbc000
)

// DefaultLinuxCmdline is what a Linux kernel gets when no command line is
// given: the console on COM1, reboot through the i8042 (which ends the VM),
// and no PCI probing, since the machine has no PCI bus (Firecracker's
// defaults, for the same reasons). A machine with its virtio devices on
// PCI (devices.Options.PCI) gets DefaultLinuxCmdlinePCI.
const DefaultLinuxCmdline = DefaultLinuxCmdlinePCI + " pci=off"

// DefaultLinuxCmdlinePCI is DefaultLinuxCmdline for a machine with a PCI
// bus.
const DefaultLinuxCmdlinePCI = "console=ttyS0 reboot=k panic=-1"

// MaxCPUs is the most vCPUs sfvmm starts: APIC IDs are 8 bits and the MP
// table and MADT give the IOAPIC the ID after the last CPU.
const MaxCPUs = 254

// VM is one virtual machine. Its methods are safe to call from any goroutine.
type VM struct {
	cfg Config
	log *slog.Logger
	// notify is cfg.Notify settled for this host when the devices were
	// built.
	notify Notify

	mem   *memory.Memory
	kind  boot.Kind
	entry *boot.Entry
	sys   *kvm.System
	kvm   *kvm.VM
	vcpus []*vcpu
	pio   *bus.Bus
	mmio  *bus.Bus

	devs *devices.Set

	source MemorySource // a clone's memory source; nil otherwise
	disks  []*disk.Disk // Config.Devices.Disks', in order
	// keepDisks is where Close leaves the disks (RestoreConfig.KeepDisks).
	keepDisks string
	// vsockPath is the vsock device's socket; vsockDir, the directory
	// made for it when none was given, removed at Close.
	vsockPath, vsockDir string

	// mu guards the run state below; cond signals its changes to parked
	// vCPUs and to holds waiting for them.
	mu      sync.Mutex
	cond    *sync.Cond
	holds   int // holds in force (see Hold)
	parked  int // vCPUs stopped by them
	running int // vCPU goroutines not yet returned
	started time.Time

	userMu sync.Mutex // serialises Pause and Resume
	user   *Hold      // the user's pause, if in force

	stopOnce sync.Once
	done     chan struct{} // closed by stop
	exit     Exit          // written once, before done is closed
}

// New validates cfg, loads the kernel into fresh guest memory and creates
// the KVM machine. Invalid input is refused before anything touches KVM; a
// field that cannot work is refused with a *ConfigError.
func New(cfg Config) (_ *VM, err error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	m := newVM(cfg)
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if m.mem, err = memory.New(cfg.MemBytes); err != nil {
		return nil, err
	}
	if err := m.loadKernel(); err != nil {
		return nil, err
	}
	if err := m.openDisks(); err != nil {
		return nil, err
	}
	if m.sys, err = kvm.Open(); err != nil {
		return nil, err
	}
	if max := min(m.sys.MaxVCPUs(), MaxCPUs); cfg.CPUs > max {
		return nil, &ConfigError{"CPUs", fmt.Errorf("%d vCPUs: this host's KVM allows at most %d", cfg.CPUs, max)}
	}
	if err := m.createMachine(); err != nil {
		return nil, err
	}
	return m, nil
}

func newVM(cfg Config) *VM {
	m := &VM{cfg: cfg, log: cfg.Log, done: make(chan struct{})}
	m.cond = sync.NewCond(&m.mu)
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.cfg.Console == nil {
		m.cfg.Console = io.Discard
	}
	return m
}

// ConfigError is New refusing a Config field. It names the field, so that
// a caller can tell its user which of its own inputs (cmd/sfvmm: a flag)
// to change.
type ConfigError struct {
	Field string // the Config field's name: "KernelPath", "InitrdPath", "CPUs", "MemBytes", "Disks" or "Notify"
	Err   error
}

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

func validate(cfg Config) error {
	if cfg.CPUs < 1 || cfg.CPUs > MaxCPUs {
		return &ConfigError{"CPUs", fmt.Errorf("%d vCPUs: must be between 1 and %d", cfg.CPUs, MaxCPUs)}
	}
	if cfg.MemBytes < 1<<20 {
		return &ConfigError{"MemBytes", fmt.Errorf("guest memory of %d bytes: the guest needs at least 1 MiB", cfg.MemBytes)}
	}
	if cfg.MemBytes%memory.PageSize != 0 {
		return &ConfigError{"MemBytes", fmt.Errorf("guest memory of %d bytes: not a multiple of the %d-byte page", cfg.MemBytes, memory.PageSize)}
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err == nil {
		if host := uint64(si.Totalram) * uint64(si.Unit); cfg.MemBytes > host {
			return &ConfigError{"MemBytes", fmt.Errorf("guest memory of %s: more than this host's %s of RAM", FormatSize(cfg.MemBytes), FormatSize(host))}
		}
	}
	if cfg.KernelPath == "" {
		return &ConfigError{"KernelPath", errors.New("no kernel given")}
	}
	if !cfg.Notify.valid() {
		return &ConfigError{"Notify", fmt.Errorf("unknown notification mode %v", cfg.Notify)}
	}
	return nil
}

// FormatSize prints a byte count in the largest binary unit that divides it.
func FormatSize(n uint64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{40, "TiB"}, {30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d %s", n>>u.shift, u.name)
		}
	}
	if n >= 1<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%d bytes", n)
}

// headOf returns a kernel file's size and first boot.HeaderBytes.
func headOf(f *os.File) (os.FileInfo, []byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	head := make([]byte, min(st.Size(), boot.HeaderBytes))
	if _, err := f.ReadAt(head, 0); err != nil {
		return nil, nil, err
	}
	return st, head, nil
}

func (m *VM) loadKernel() error {
	f, err := os.Open(m.cfg.KernelPath)
	if err != nil {
		return fmt.Errorf("read kernel: %w", err)
	}
	defer f.Close()
	st, head, err := headOf(f)
	if err != nil {
		return fmt.Errorf("read kernel: %w", err)
	}
	if m.kind, err = boot.DetectFile(head, f, st.Size()); err != nil {
		return fmt.Errorf("kernel %s: %w", m.cfg.KernelPath, err)
	}
	if m.kind == boot.BzImage && m.cfg.UnpackKernel {
		vf, err := boot.UnpackedKernel(f, st, head, m.cfg.KernelCache, m.log)
		switch {
		case err != nil:
			// A payload sfvmm cannot read may still be one the
			// kernel's own decompressor reads.
			m.log.Info(fmt.Sprintf("kernel %s: not unpacked (%v); it decompresses itself", m.cfg.KernelPath, err))
		case vf != nil:
			defer vf.Close()
			f = vf
			if st, head, err = headOf(f); err != nil {
				return fmt.Errorf("unpacked kernel of %s: %w", m.cfg.KernelPath, err)
			}
			if m.kind, err = boot.DetectFile(head, f, st.Size()); err != nil {
				return fmt.Errorf("unpacked kernel of %s: %w", m.cfg.KernelPath, err)
			}
		}
	}
	p := boot.Params{Kernel: head, Cmdline: m.cfg.Cmdline, CPUs: m.cfg.CPUs, ACPI: devices.ACPI(m.cfg.Devices)}
	switch m.kind {
	case boot.BzImage, boot.Vmlinux:
		// Linux and its initrd go from their files straight into guest
		// RAM: neither passes through the VMM's heap, which would
		// otherwise add their size to sfvmm's peak RSS.
		p.KernelFile, p.KernelSize = f, st.Size()
		if m.cfg.Cmdline == "" {
			m.cfg.Cmdline = DefaultLinuxCmdline
			if m.cfg.Devices.PCI {
				m.cfg.Cmdline = DefaultLinuxCmdlinePCI
			}
			p.Cmdline = m.cfg.Cmdline
		}
		if m.cfg.InitrdPath != "" {
			initrd, err := os.Open(m.cfg.InitrdPath)
			if err != nil {
				return fmt.Errorf("read initrd: %w", err)
			}
			defer initrd.Close()
			ist, err := initrd.Stat()
			if err != nil {
				return fmt.Errorf("read initrd: %w", err)
			}
			p.InitrdFile, p.InitrdSize = initrd, ist.Size()
		}
	default:
		// Multiboot and ELF64 test kernels are small and parsed whole.
		if p.Kernel, err = os.ReadFile(m.cfg.KernelPath); err != nil {
			return fmt.Errorf("read kernel: %w", err)
		}
		if m.kind == boot.Multiboot {
			// QEMU hands a multiboot kernel its own file name first.
			p.Cmdline = boot.MultibootCmdline(m.cfg.KernelPath, m.cfg.Cmdline)
			if m.cfg.InitrdPath != "" {
				if p.Modules, err = boot.ParseModules(m.cfg.InitrdPath, os.ReadFile); err != nil {
					return fmt.Errorf("multiboot modules: %w", err)
				}
			}
		} else if m.cfg.InitrdPath != "" {
			return &ConfigError{"InitrdPath", fmt.Errorf("an %s kernel takes no initrd", m.kind)}
		}
	}
	if m.entry, err = boot.Load(m.mem, p); err != nil {
		return fmt.Errorf("load %s kernel %s: %w", m.kind, m.cfg.KernelPath, err)
	}
	return nil
}

func (m *VM) createMachine() error {
	if err := m.createVM(); err != nil {
		return err
	}
	if g := m.devs.VMGenID; g != nil {
		if err := g.Start(m.entry.VMGenIDAddr); err != nil {
			return err
		}
	}
	cpuid, err := m.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	for i := 0; i < m.cfg.CPUs; i++ {
		c, err := m.newVCPU(i, cpuidFor(cpuid, i, m.cfg.CPUs, m.sys.CheckExtension(kvm.CapTSCDeadlineTimer) > 0))
		if err != nil {
			return fmt.Errorf("vcpu %d: %w", i, err)
		}
		m.vcpus = append(m.vcpus, c)
		// Only the bootstrap processor starts at the kernel entry; KVM
		// keeps the others waiting for INIT/SIPI from the guest.
		if i == 0 {
			if err := c.setEntry(m.entry); err != nil {
				return fmt.Errorf("vcpu 0: %w", err)
			}
		}
	}
	return nil
}

// createVM creates the KVM VM with its in-kernel devices, guest RAM and the
// emulated devices: everything but the vCPUs.
func (m *VM) createVM() (err error) {
	if m.kvm, err = m.sys.CreateVM(); err != nil {
		return err
	}
	if err := m.kvm.SetTSSAddr(tssAddr); err != nil {
		return err
	}
	if err := m.kvm.SetIdentityMapAddr(identityMapAddr); err != nil {
		return err
	}
	if err := m.kvm.CreateIRQChip(); err != nil {
		return err
	}
	if err := m.kvm.CreatePIT2(); err != nil {
		return err
	}
	for i, r := range m.mem.Regions() {
		if err := m.kvm.SetUserMemoryRegion(uint32(i), r.GPA, r.Host); err != nil {
			return fmt.Errorf("map guest RAM at %#x: %w", r.GPA, err)
		}
	}
	return m.addDevices()
}

func (m *VM) addDevices() error {
	if m.keepsP() {
		for _, d := range m.disks {
			d.KeepP()
		}
	}
	m.pio = bus.New("pio", m.log)
	m.mmio = bus.New("mmio", m.log)
	w := devices.Wiring{
		IRQ: m.irq, Console: m.cfg.Console, Now: time.Now,
		CPUs: m.cfg.CPUs, RAMSize: m.mem.Size(), Cmdline: m.cfg.Cmdline,
		DebugExit: func(code int) { m.stop(Exit{Reason: ExitDebug, Code: code}) },
		Reset:     func() { m.stop(Exit{Reason: ExitReset}) },
		PowerOff:  func() { m.stop(Exit{Reason: ExitPowerOff}) },
		CloneExit: func(status uint32) { m.stop(Exit{Reason: ExitCloneExit, Code: int(min(status, 255))}) },
		Options:   m.cfg.Devices, Memory: m.mem, Log: m.log, Disks: m.backends(),
		IOEventFD: m.kvm.IOEventFD, SignalMSI: m.kvm.SignalMSI,
		Discard: func(b []byte) {
			// A clone's RAM is its memory source's to fill: a page
			// dropped there would come again from the parent.
			if m.source == nil {
				m.mem.Discard(b)
			}
		},
	}
	if m.cfg.Fork != nil {
		w.ForkHost = m.cfg.Fork(m)
	}
	m.notify = m.cfg.Notify.Settle(procsBase(), m.cfg.CPUs)
	if m.notify == NotifyExit {
		w.IOEventFD = nil
	}
	m.log.Debug(fmt.Sprintf("virtio notifications: %s (--notify %s)", m.notify, m.cfg.Notify))
	if m.cfg.Devices.VsockCID != 0 {
		w.VsockDial = m.cfg.VsockDial
		if w.VsockPath = m.cfg.VsockPath; w.VsockPath == "" {
			// A directory of its own, which only this user can enter:
			// in the shared temporary directory another user could
			// bind PATH_N first and answer the guest.
			dir, err := os.MkdirTemp("", "sfvmm-vsock-")
			if err != nil {
				return fmt.Errorf("vsock: %w", err)
			}
			m.vsockDir = dir
			w.VsockPath = filepath.Join(dir, "v.sock")
		}
		m.vsockPath = w.VsockPath
		m.log.Info(fmt.Sprintf("vsock: guest CID %d; host programs connect to %s", m.cfg.Devices.VsockCID, w.VsockPath))
	}
	var err error
	if m.devs, err = devices.New(w); err != nil {
		return err
	}
	return m.devs.Register(m.pio, m.mmio)
}

// irq returns the interrupt output of a device wired to ISA line n.
func (m *VM) irq(n uint32) func(level bool) {
	return func(level bool) {
		if err := m.kvm.IRQLine(n, level); err != nil {
			m.log.Error(fmt.Sprintf("irq %d: %v", n, err))
		}
	}
}

// SerialInput queues host input for the guest's COM1.
func (m *VM) SerialInput(p []byte) { m.devs.Serial.Input(p) }

// Kind is the format of the loaded kernel.
func (m *VM) Kind() boot.Kind { return m.kind }

// Run runs the guest until it powers off, resets, exits through
// isa-debug-exit, triple-faults, fails, or ctx is cancelled. It returns how
// the machine ended; err is set only for a failure of the VMM itself.
func (m *VM) Run(ctx context.Context) (Exit, error) {
	var wg sync.WaitGroup
	m.mu.Lock()
	m.started = time.Now()
	m.running = len(m.vcpus)
	m.mu.Unlock()
	if m.keepsP() {
		holdProcs(len(m.vcpus))
		defer releaseProcs(len(m.vcpus))
	}
	for _, c := range m.vcpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.run(m)
			m.mu.Lock()
			m.running--
			m.cond.Broadcast()
			m.mu.Unlock()
			if err != nil {
				m.stop(Exit{Reason: ExitError, Err: fmt.Errorf("vcpu %d: %w", c.ID, err)})
			}
		}()
	}
	var lost <-chan struct{}
	if m.source != nil {
		lost = m.source.Done()
	}
	select {
	case <-m.done:
	case <-ctx.Done():
		m.stop(Exit{Reason: ExitStopped, Err: context.Cause(ctx)})
	case <-lost:
		// vCPUs blocked on pages that will never come are woken by
		// the fence (KVM_RUN fails with EFAULT) and then see the stop.
		// The stop comes first, so that it is the reason recorded
		// rather than a vCPU's EFAULT.
		m.stop(Exit{Reason: ExitError, Err: fmt.Errorf("guest memory lost: %w", m.source.Err())})
		if err := m.source.Fence(); err != nil {
			m.log.Error(fmt.Sprintf("fence guest RAM: %v", err))
		}
	}
	wg.Wait()
	if m.exit.Reason == ExitError {
		return m.exit, m.exit.Err
	}
	return m.exit, nil
}

// Stop ends the machine from outside, as if it had powered off.
func (m *VM) Stop() { m.stop(Exit{Reason: ExitStopped}) }

// stop records the first reason the machine ends and kicks every vCPU out of
// the guest. Later calls are no-ops.
func (m *VM) stop(e Exit) {
	m.stopOnce.Do(func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.exit = e
		close(m.done)
		for _, c := range m.vcpus {
			c.kick()
		}
		m.cond.Broadcast() // wake parked vCPUs so they see the stop
	})
}

// RunState is "running", "paused" (also before Run) or "stopped".
func (m *VM) RunState() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.stopping():
		return "stopped"
	case m.holds > 0 || m.started.IsZero():
		return "paused"
	}
	return "running"
}

// Uptime is the time since Run started.
func (m *VM) Uptime() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started.IsZero() {
		return 0
	}
	return time.Since(m.started)
}

// Config returns the machine's configuration.
func (m *VM) Config() Config { return m.cfg }

// ErrStopped is returned for operations on a machine that has ended.
var ErrStopped = errors.New("the machine has stopped")

// park is called by a vCPU that left KVM_RUN because of a kick. It blocks
// while a hold is in force and reports whether the vCPU should go on.
func (m *VM) park(c *vcpu) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.holds > 0 && !m.stopping() {
		m.parked++
		m.cond.Broadcast()
		for m.holds > 0 && !m.stopping() {
			m.cond.Wait()
		}
		m.parked--
	}
	if m.stopping() {
		return false
	}
	// Cleared under mu: stop sets it again under mu, so a stop cannot be
	// lost between this and the next KVM_RUN.
	c.RunData().SetImmediateExit(false)
	return true
}

func (m *VM) stopping() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// Close releases the machine. It must not be called while Run is running.
func (m *VM) Close() error {
	var errs []error
	for _, c := range m.vcpus {
		errs = append(errs, c.Close())
	}
	// The devices' goroutines stop before the KVM file they raise
	// interrupts on closes, and before guest RAM goes.
	if m.devs != nil {
		errs = append(errs, m.devs.Close())
	}
	if m.vsockDir != "" {
		errs = append(errs, os.RemoveAll(m.vsockDir))
	}
	// Disks kept for the user are copied while a clone's memory source
	// can still fill what its disks read from the parent; a machine that
	// never ran (a failed restore) has nothing to keep.
	m.mu.Lock()
	ran := !m.started.IsZero()
	m.mu.Unlock()
	if ran {
		errs = append(errs, m.keepDiskCopies())
	}
	if m.kvm != nil {
		errs = append(errs, m.kvm.Close())
	}
	if m.sys != nil {
		errs = append(errs, m.sys.Close())
	}
	if m.source != nil {
		errs = append(errs, m.source.Close())
	}
	if m.mem != nil {
		errs = append(errs, m.mem.Close())
	}
	errs = append(errs, m.closeDisks())
	return errors.Join(errs...)
}

// VsockPath is the vsock device's socket ("" without one): where host
// programs reach the guest, and what its clones' sockets are named after.
func (m *VM) VsockPath() string { return m.vsockPath }

// DescribeVCPUs says where each vCPU is (instruction pointer, mode): what a
// person wants to see when a guest hangs. Call it while paused or after Run.
func (m *VM) DescribeVCPUs() string {
	var b strings.Builder
	for _, c := range m.vcpus {
		b.WriteString(c.describe("vcpu state") + "\n")
	}
	return b.String()
}

// Memory is the machine's guest RAM.
func (m *VM) Memory() *memory.Memory { return m.mem }

// CloneID is the machine's clone ID, 0 for a parent.
func (m *VM) CloneID() uint32 { return m.devs.Fork.ID() }
