package vmm

import (
	"fmt"
	"runtime"
)

// Notify is how the guest's virtio queue notifications reach the devices
// (Config.Notify). It is the host's choice, not the guest's: a snapshot
// or a fork does not keep it, and a restored machine or a clone takes its
// own.
type Notify int

const (
	// NotifyAuto is NotifyIOEventFD where the host has more CPUs than
	// the machine has vCPUs, and NotifyExit where it has not.
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
	if n >= 0 && int(n) < len(notifyNames) {
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

// Settle is n with NotifyAuto decided for a machine of vcpus on a host
// whose process may run on hostCPUs.
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
// Config.Notify, settled for this host.
func (m *VM) Notify() Notify {
	// NumCPU is the CPUs the process may run on (its affinity mask at
	// start), not the host's count: a VMM pinned to one CPU has none to
	// spare.
	return m.cfg.Notify.Settle(runtime.NumCPU(), m.cfg.CPUs)
}
