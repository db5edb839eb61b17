package vmm

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/vmm/boot"
	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
	"github.com/sfvmm/sfvmm/vmm/kvm"
)

// vcpu is one KVM vCPU, run by one goroutine locked to its OS thread.
type vcpu struct {
	*kvm.VCPU
	cpuid []kvm.CPUIDEntry // as set, kept for snapshots
	tid   atomic.Int32     // the OS thread in KVM_RUN, 0 before it starts

	// Exit counts, written by the vCPU's goroutine only and read after Run.
	exits   map[uint32]uint64 // by KVM exit reason
	ioPorts map[uint16]uint64 // port-I/O exits by port
	mmio    uint64
	eintr   uint64
}

// LAPIC local vector table registers and delivery modes (SDM vol. 3, 11.5.1).
const (
	lapicLVT0       = 0x350
	lapicLVT1       = 0x360
	lapicModeExtINT = 7 << 8
	lapicModeNMI    = 4 << 8
)

func (m *VM) newVCPU(id int, cpuid []kvm.CPUIDEntry) (*vcpu, error) {
	kc, err := m.kvm.CreateVCPU(id)
	if err != nil {
		return nil, err
	}
	c := &vcpu{VCPU: kc, cpuid: cpuid, exits: map[uint32]uint64{}, ioPorts: map[uint16]uint64{}}
	if err := c.SetCPUID2(cpuid); err != nil {
		c.Close()
		return nil, err
	}
	// As a PC BIOS leaves it: LINT0 takes the 8259's ExtINT, LINT1 NMIs.
	l, err := c.GetLAPIC()
	if err == nil {
		setLAPICReg(&l, lapicLVT0, lapicModeExtINT)
		setLAPICReg(&l, lapicLVT1, lapicModeNMI)
		err = c.SetLAPIC(l)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func setLAPICReg(l *kvm.LAPIC, off int, v uint32) {
	l.Regs[off] = byte(v)
	l.Regs[off+1] = byte(v >> 8)
	l.Regs[off+2] = byte(v >> 16)
	l.Regs[off+3] = byte(v >> 24)
}

func kvmSegment(s boot.Segment) kvm.Segment {
	return kvm.Segment{
		Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type,
		Present: s.Present, DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G,
	}
}

// setEntry puts the BSP in the state the boot protocol promises the kernel.
func (c *vcpu) setEntry(e *boot.Entry) error {
	s, err := c.GetSregs()
	if err != nil {
		return err
	}
	s.CS = kvmSegment(e.CS)
	ds := kvmSegment(e.DS)
	s.DS, s.ES, s.FS, s.GS, s.SS = ds, ds, ds, ds, ds
	s.GDT = kvm.DTable{Base: e.GDTBase, Limit: e.GDTLimit}
	s.CR0, s.CR3, s.CR4, s.EFER = e.CR0, e.CR3, e.CR4, e.EFER
	if err := c.SetSregs(s); err != nil {
		return err
	}
	return c.SetRegs(kvm.Regs{
		RIP: e.RIP, RSP: e.RSP, RAX: e.RAX, RBX: e.RBX, RSI: e.RSI,
		RFLAGS: 2, // bit 1 is reserved and always set
	})
}

// keepPOK says whether a vCPU may keep its P in KVM_RUN. It relies on the
// runtime's asynchronous preemption: without it (GODEBUG=asyncpreemptoff=1)
// nothing would interrupt a guest that does not exit, and a garbage
// collection would wait for it.
var keepPOK = !asyncPreemptOff(os.Getenv("GODEBUG"))

// asyncPreemptOff reports whether a GODEBUG value turns asynchronous
// preemption off, read as the runtime reads it: a setting is a number,
// any but 0 is on, one that is not a number is ignored, the last of a
// name wins, and gccheckmark turns preemption off too.
func asyncPreemptOff(godebug string) bool {
	var off, checkmark bool
	for kv := range strings.SplitSeq(godebug, ",") {
		name, v, _ := strings.Cut(kv, "=")
		n, err := strconv.Atoi(v)
		if err != nil {
			continue
		}
		switch name {
		case "asyncpreemptoff":
			off = n != 0
		case "gccheckmark":
			checkmark = n != 0
		}
	}
	return off || checkmark
}

// keepsP says whether m's vCPUs keep their P in KVM_RUN. Not in a machine
// whose RAM a memory source fills (a clone): its vCPUs wait for pages in
// KVM_RUN, and those waits do not all end at a signal (a stage-2 fault
// before Linux 6.2, KVM's own accesses to guest RAM), so a stop of the
// world would wait on the memory server, and with it the goroutine that
// reports a lost server. Nor in one whose RAM maps a snapshot's memory
// file off local storage: a first touch waits on that file's server.
func (m *VM) keepsP() bool { return keepPOK && m.source == nil && !m.mem.RemoteFile() }

// procs counts the Ps that running vCPUs keep (kvm.VCPU.Run), which are
// added to GOMAXPROCS so that the rest of the process (devices, the
// memory server, the API) still has the parallelism it was given. While
// they are counted, GOMAXPROCS no longer follows the CPU quota on its own
// (a parked or idle vCPU's P is idle and the runtime may use it); once
// none are, the runtime's default comes back, unless GOMAXPROCS was set.
var procs struct {
	sync.Mutex
	base, held int
}

// procsBase is GOMAXPROCS without the Ps running vCPUs keep: the
// parallelism the process has for everything else.
func procsBase() int {
	procs.Lock()
	defer procs.Unlock()
	if procs.held == 0 {
		return runtime.GOMAXPROCS(0)
	}
	return procs.base
}

// holdProcs adds n vCPUs' Ps to GOMAXPROCS; releaseProcs takes them back.
func holdProcs(n int) {
	procs.Lock()
	defer procs.Unlock()
	if procs.held == 0 {
		procs.base = runtime.GOMAXPROCS(0)
	}
	procs.held += n
	runtime.GOMAXPROCS(procs.base + procs.held)
}

func releaseProcs(n int) {
	procs.Lock()
	defer procs.Unlock()
	procs.held -= n
	if procs.held == 0 && os.Getenv("GOMAXPROCS") == "" {
		runtime.SetDefaultGOMAXPROCS()
		return
	}
	runtime.GOMAXPROCS(procs.base + procs.held)
}

// kick makes the vCPU leave KVM_RUN soon: immediate_exit covers a vCPU about
// to enter, the signal one already inside. SIGURG is the signal the Go
// runtime already uses for preemption, so it is harmless to any thread.
func (c *vcpu) kick() {
	c.RunData().SetImmediateExit(true)
	if tid := c.tid.Load(); tid != 0 {
		unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
	}
}

// run is the vCPU's loop. It returns nil when the machine stops and an error
// when the vCPU cannot go on.
func (c *vcpu) run(m *VM) error {
	runtime.LockOSThread()
	// The thread is left locked: when this goroutine ends the runtime
	// discards it, so no other goroutine inherits a thread KVM knows.
	c.tid.Store(int32(unix.Gettid()))
	rd := c.RunData()
	// The guest runs with the goroutine keeping its P (kvm.VCPU.Run)
	// while it exits often. The runtime preempts a goroutine that has
	// held its P for 10 ms without rescheduling, with a signal that ends
	// KVM_RUN; a garbage collection signals it too. So after a run that
	// a signal ended, one run goes through the runtime's system-call
	// entry: a guest with nothing to do waits there without any thread
	// waking for it, and a busy one's next exit ends it.
	canKeepP := m.keepsP()
	keepP := canKeepP
	for {
		err := c.Run(keepP)
		keepP = canKeepP && err == nil
		if err != nil {
			if !errors.Is(err, unix.EINTR) {
				return err
			}
			c.eintr++
			// A kick (stop, pause) or a stray signal. KVM_RUN has
			// completed any pending I/O before returning EINTR, so
			// the vCPU's state is consistent here.
			if !m.park(c) {
				return nil
			}
			continue
		}
		r := rd.ExitReason()
		c.exits[r]++
		switch r {
		case kvm.ExitIO:
			dir, size, port, count, data, ok := rd.IO()
			c.ioPorts[port]++
			if !ok {
				return fmt.Errorf("port I/O exit with a data window outside kvm_run (port %#x)", port)
			}
			if port == forkdev.Port {
				// The fork device reads the caller's registers, so it
				// is called here rather than through the bus.
				if err := m.devs.Fork.PortIO(c.ID, dir == kvm.IOIn, data[:int(size)*int(count)], c.forkRegs); err != nil {
					return err
				}
				continue
			}
			for i := 0; i < int(count); i++ {
				b := data[i*int(size) : (i+1)*int(size)]
				if dir == kvm.IOOut {
					m.pio.Write(uint64(port), b)
				} else {
					m.pio.Read(uint64(port), b)
				}
			}
		case kvm.ExitMMIO:
			addr, data, write := rd.MMIO()
			if write {
				m.mmio.Write(addr, data)
			} else {
				m.mmio.Read(addr, data)
			}
		case kvm.ExitHLT, kvm.ExitIntr:
			// HLT is handled in the kernel with an in-kernel LAPIC; an
			// interrupted run just re-enters (or sees the stop).
		case kvm.ExitShutdown:
			m.stop(Exit{Reason: ExitTripleFault, Detail: c.describeShutdown()})
		case kvm.ExitSystemEvent:
			switch rd.SystemEventType() {
			case kvm.SystemEventShutdown:
				m.stop(Exit{Reason: ExitPowerOff})
			case kvm.SystemEventReset:
				m.stop(Exit{Reason: ExitReset})
			default:
				m.stop(Exit{Reason: ExitError, Err: errors.New(c.describe("guest crash event"))})
			}
		case kvm.ExitFailEntry:
			return fmt.Errorf("%s (hardware reason %#x)", c.describe("KVM could not enter the guest"), rd.HardwareEntryFailureReason())
		case kvm.ExitInternalError:
			return fmt.Errorf("%s (suberror %d)", c.describe("KVM internal error"), rd.InternalSuberror())
		default:
			return fmt.Errorf("%s (exit reason %d)", c.describe("unexpected KVM exit"), r)
		}
	}
}

// forkRegs reads the registers a fork call passes its arguments in.
func (c *vcpu) forkRegs() (forkdev.Regs, error) {
	r, err := c.GetRegs()
	return forkdev.Regs{EAX: uint32(r.RAX), EBX: uint32(r.RBX), ECX: uint32(r.RCX)}, err
}

// describeShutdown describes a triple fault. KVM on AMD resets the vCPU
// at a shutdown intercept (svm.c, shutdown_interception: the VMCB is
// undefined after one), so its registers there are the reset state's and
// would point at the reset vector, not at the fault.
func (c *vcpu) describeShutdown() string {
	if amd(c.cpuid) {
		return fmt.Sprintf("guest triple fault on vcpu %d (registers lost: KVM on AMD resets the vCPU at a shutdown)", c.ID)
	}
	return c.describe("guest triple fault")
}

// describe names what happened with the vCPU's instruction pointer and mode,
// which is what a person debugging a guest wants first.
func (c *vcpu) describe(what string) string {
	r, err := c.GetRegs()
	if err != nil {
		return fmt.Sprintf("%s on vcpu %d", what, c.ID)
	}
	s, err := c.GetSregs()
	if err != nil {
		return fmt.Sprintf("%s on vcpu %d at rip %#x", what, c.ID, r.RIP)
	}
	return fmt.Sprintf("%s on vcpu %d at rip %#x (cs %#x, cr0 %#x, efer %#x, rsp %#x)",
		what, c.ID, r.RIP, s.CS.Selector, s.CR0, s.EFER, r.RSP)
}

// FailCall makes a fork call whose port read has completed (with the
// parent's result) return v instead, by rewriting the caller's RAX. If
// that fails the machine ends: the guest would go on with a wrong answer.
func (m *VM) FailCall(vcpu int, v int32) {
	c := m.vcpus[vcpu]
	r, err := c.GetRegs()
	if err == nil {
		r.RAX = uint64(uint32(v))
		err = c.SetRegs(r)
	}
	if err != nil {
		m.stop(Exit{Reason: ExitError, Err: fmt.Errorf("vcpu %d: return a failed fork call: %w", vcpu, err)})
	}
}
