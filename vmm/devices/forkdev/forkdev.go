// Package forkdev is the guest's side of VM fork: a paravirtual port-I/O
// device through which a guest calls SnowFlock's fork API. It decodes a
// call, checks that the caller may make it (parent or clone), and hands it
// to the VMM (Host), which does the work.
//
// # ABI
//
// One 32-bit port, Port (0x5f0). A call is a single `inl` from it with
// the call number in EAX and its arguments in EBX and ECX; the result comes
// back in EAX as a signed 32-bit value, negative for an error:
//
//	mov $SF_CLONE, %eax ; mov ticket, %ebx ; inl $0x5f0, %eax
//
// A single instruction, so that a guest OS may reschedule the calling
// thread between any two instructions without mixing up calls. Any other
// access to the port (a write, a 1- or 2-byte read) is ignored and reads
// all ones (SF_EINVAL as a 32-bit value).
//
//	nr  call                    EBX       ECX      result
//	0   probe                   -         -        Magic ("SFRK")
//	1   sf_request_ticket(n)    n         -        ticket (> 0)
//	2   sf_clone(ticket)        ticket    -        0 in the parent, the clone ID (1..m) in each clone
//	3   sf_checkpoint_parent()  -         -        checkpoint C (> 0) in the parent, 0 in the clones created from it
//	4   sf_create_clones(C, t)  C         ticket   0
//	5   sf_exit(status)         status    -        does not return in a clone (the VM ends before its next instruction)
//	6   sf_join(ticket)         ticket    -        number of clones that ended without sf_exit (killed, failed); SF_EAGAIN while some still run
//	7   sf_kill(ticket)         ticket    -        0: every clone of the ticket has ended
//	8   sf_ticket_slots(ticket) ticket    -        m, the slots the ticket grants
//	9   sf_id()                 -         -        this VM's clone ID: 0 in the parent
//
// sf_join does not block the vCPU for long: it returns SF_EAGAIN after at
// most JoinWait while clones still run, and the guest calls it again (the C
// header's sf_join loops), so that a waiting guest stays responsive to
// pause, snapshot and stop. The header is kernels/lib/sf.h.
//
// It is not the fork itself (package vmm) nor the guest's library.
package forkdev

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Port is the device's port.
const Port = 0x5f0

// Magic is what probe returns: "SFRK" in little-endian.
const Magic = 0x4b524653

// JoinWait is the longest one sf_join call blocks before SF_EAGAIN.
const JoinWait = 50 * time.Millisecond

// Call numbers.
const (
	CallProbe = iota
	CallRequestTicket
	CallClone
	CallCheckpointParent
	CallCreateClones
	CallExit
	CallJoin
	CallKill
	CallTicketSlots
	CallID
)

// Errno is a call's error code, returned to the guest as a negative value.
type Errno int32

// Error codes. Their values are ABI.
const (
	EINVAL      Errno = -1  // unknown call, bad argument or access
	ENOTICKET   Errno = -2  // no such ticket (never issued, or already joined or killed)
	ECAPACITY   Errno = -3  // more clones than the capacity, or no slot free
	ENOTPARENT  Errno = -4  // a clone made a call only the parent may make
	ENOTCHILD   Errno = -5  // the parent called sf_exit
	EAGAIN      Errno = -6  // sf_join: clones still run; call again
	EBUSY       Errno = -7  // a frozen image is still in use by live clones
	ENOCHECKPT  Errno = -8  // no such checkpoint
	ETICKETUSED Errno = -9  // the ticket's slots already have clones
	EFORK       Errno = -10 // the VMM could not fork (it logs why)
	ENOFORK     Errno = -11 // this VMM has fork disabled
	errnoLowest       = ENOFORK
)

var errnoNames = map[Errno]string{
	EINVAL: "SF_EINVAL", ENOTICKET: "SF_ENOTICKET", ECAPACITY: "SF_ECAPACITY",
	ENOTPARENT: "SF_ENOTPARENT", ENOTCHILD: "SF_ENOTCHILD", EAGAIN: "SF_EAGAIN",
	EBUSY: "SF_EBUSY", ENOCHECKPT: "SF_ENOCHECKPT", ETICKETUSED: "SF_ETICKETUSED",
	EFORK: "SF_EFORK", ENOFORK: "SF_ENOFORK",
}

func (e Errno) Error() string {
	if n, ok := errnoNames[e]; ok {
		return n
	}
	return fmt.Sprintf("SF error %d", int32(e))
}

// Host does the parent's calls. The device has checked the role: they
// are never called in a clone. vcpu is the calling vCPU's index. A method
// returns a result (>= 0) or an error code.
type Host interface {
	RequestTicket(n uint32) (int32, Errno)                 // parent
	Clone(vcpu int, ticket uint32) (int32, Errno)          // parent
	CheckpointParent(vcpu int) (int32, Errno)              // parent
	CreateClones(checkpoint, ticket uint32) Errno          // parent
	Join(ticket uint32, wait time.Duration) (int32, Errno) // parent
	Kill(ticket uint32) Errno                              // parent
	TicketSlots(ticket uint32) (int32, Errno)              // parent
}

// Device is one VM's fork device. Its clone ID is set before the VM runs
// and never changes after, so concurrent calls need no locking here; Host
// serializes what must be.
type Device struct {
	host Host
	exit func(status uint32)
	id   uint32
}

// New returns the device of a VM that is not (yet) a clone; Restore makes
// it one. exit ends the VM when a clone calls sf_exit. A nil host answers
// the parent's calls with SF_ENOFORK.
func New(host Host, exit func(status uint32)) *Device { return &Device{host: host, exit: exit} }

// Regs are the registers a call reads.
type Regs struct{ EAX, EBX, ECX uint32 }

// Call performs the call in regs, made by vCPU vcpu, and returns what the
// guest reads in EAX.
func (d *Device) Call(vcpu int, r Regs) int32 {
	v, err := d.call(vcpu, r)
	if err != 0 {
		return int32(err)
	}
	return v
}

func (d *Device) call(vcpu int, r Regs) (int32, Errno) {
	switch r.EAX {
	case CallProbe:
		return Magic, 0
	case CallID:
		return int32(d.id), 0
	}
	if r.EAX > CallID {
		return 0, EINVAL
	}
	if r.EAX == CallExit {
		if d.id == 0 {
			return 0, ENOTCHILD
		}
		d.exit(r.EBX)
		return 0, 0
	}
	if d.id != 0 {
		return 0, ENOTPARENT
	}
	if d.host == nil {
		return 0, ENOFORK
	}
	switch r.EAX {
	case CallRequestTicket:
		if r.EBX == 0 || r.EBX > 1<<16 {
			return 0, EINVAL
		}
		return d.host.RequestTicket(r.EBX)
	case CallClone:
		return d.host.Clone(vcpu, r.EBX)
	case CallCheckpointParent:
		return d.host.CheckpointParent(vcpu)
	case CallCreateClones:
		return 0, d.host.CreateClones(r.EBX, r.ECX)
	case CallJoin:
		return d.host.Join(r.EBX, JoinWait)
	case CallKill:
		return 0, d.host.Kill(r.EBX)
	case CallTicketSlots:
		return d.host.TicketSlots(r.EBX)
	}
	return 0, EINVAL
}

// PortIO handles a port-I/O exit on Port: for a 4-byte read it performs the
// call (regs reads the caller's registers) and writes the result into data;
// anything else reads all ones and does nothing.
func (d *Device) PortIO(vcpu int, in bool, data []byte, regs func() (Regs, error)) error {
	if !in || len(data) != 4 {
		if in {
			for i := range data {
				data[i] = 0xff
			}
		}
		return nil
	}
	r, err := regs()
	if err != nil {
		return fmt.Errorf("fork device: read registers: %w", err)
	}
	binary.LittleEndian.PutUint32(data, uint32(d.Call(vcpu, r)))
	return nil
}

// ID is the VM's clone ID.
func (d *Device) ID() uint32 { return d.id }

// State is the device's saved state: the VM's clone ID, so that a clone
// restored from a snapshot is still that clone.
type State struct{ ID uint32 }

// Save returns the device's state.
func (d *Device) Save() (State, error) { return State{ID: d.id}, nil }

// Restore sets the device's state; call it before the VM runs.
func (d *Device) Restore(s State) error {
	d.id = s.ID
	return nil
}
