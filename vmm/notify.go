package vmm

import "fmt"

// Notify is how the guest's virtio queue notifications reach the devices
// (Config.Notify). It is the host's choice, not the guest's: a snapshot
// or a fork does not keep it, and a restored machine or a clone takes its
// own.
type Notify int

const (
	// NotifyAuto is NotifyIOEventFD where the process may run more
	// threads at once than the machine has vCPUs (GOMAXPROCS as the
	// runtime sets it: the CPUs it may run on, within its CPU quota), and
	// NotifyExit where it may not. It looks at one machine: a host
	// running many may want NotifyExit for all.
	NotifyAuto Notify = iota
	// NotifyIOEventFD: KVM signals an eventfd and the vCPU goes straight
	// back to the guest, while a thread of the device's serves the
	// queue, on a CPU of its own where the host has one spare. The guest
	// goes on with its other work while its requests are copied.
	NotifyIOEventFD
	// NotifyExit: each notification exits to sfvmm, and the vCPU's own
	// thread serves the queue before it goes back to the guest. Where
	// the device's thread would have no CPU of its own, this saves the
	// switches to it and back, and the guest's idle entry and exit while
	// it waits.
	NotifyExit
)

var notifyNames = []string{NotifyAuto: "auto", NotifyIOEventFD: "ioeventfd", NotifyExit: "exit"}

func (n Notify) String() string {
	if n.valid() {
		return notifyNames[n]
	}
	return fmt.Sprintf("Notify(%d)", int(n))
}

// ParseNotify reads a Notify's name: auto, ioeventfd or exit.
func ParseNotify(s string) (Notify, error) {
	for n, name := range notifyNames {
		if s == name {
			return Notify(n), nil
		}
	}
	return 0, fmt.Errorf("%q: want auto, ioeventfd or exit", s)
}

func (n Notify) valid() bool { return n >= NotifyAuto && n <= NotifyExit }

// Settle is n with NotifyAuto decided for a machine of vcpus in a
// process that may run hostCPUs threads at once.
func (n Notify) Settle(hostCPUs, vcpus int) Notify {
	if n != NotifyAuto {
		return n
	}
	if hostCPUs > vcpus {
		return NotifyIOEventFD
	}
	return NotifyExit
}

// Notify is how the machine's virtio notifications reach its devices:
// Config.Notify, settled for this host (NotifyAuto before the devices
// are built).
func (m *VM) Notify() Notify { return m.notify }
