package vmm

import "fmt"

// ExitReason says how a machine ended.
type ExitReason int

const (
	ExitPowerOff    ExitReason = iota + 1 // ACPI S5
	ExitReset                             // i8042 reset or a KVM reset event
	ExitDebug                             // isa-debug-exit; Exit.Code is (value<<1)|1
	ExitTripleFault                       // the guest triple-faulted
	ExitStopped                           // stopped from the host (signal, API)
	ExitError                             // the VMM failed; Exit.Err says why
	ExitCloneExit                         // a clone called sf_exit; Exit.Code is its status
)

func (r ExitReason) String() string {
	switch r {
	case ExitPowerOff:
		return "power-off"
	case ExitReset:
		return "reset"
	case ExitDebug:
		return "debug-exit"
	case ExitTripleFault:
		return "triple fault"
	case ExitStopped:
		return "stopped"
	case ExitError:
		return "error"
	case ExitCloneExit:
		return "sf_exit"
	}
	return fmt.Sprintf("ExitReason(%d)", int(r))
}

// Exit is how a machine ended.
type Exit struct {
	Reason ExitReason
	Code   int    // the debug-exit code, for ExitDebug; the sf_exit status, for ExitCloneExit
	Detail string // what the VMM saw (registers at a triple fault, ...)
	Err    error  // for ExitError, and the cause of ExitStopped if any
}

// Process exit codes that are not the guest's own. A debug-exit code is
// always odd, so even codes cannot be mistaken for one.
const (
	StatusTripleFault = 2
	StatusError       = 1
)

// Status is the process exit code sfvmm uses for e: the guest's debug-exit
// code, 0 for a power-off, reset or host stop, StatusTripleFault, or
// StatusError.
func (e Exit) Status() int {
	switch e.Reason {
	case ExitDebug, ExitCloneExit:
		return e.Code
	case ExitPowerOff, ExitReset, ExitStopped:
		return 0
	case ExitTripleFault:
		return StatusTripleFault
	}
	return StatusError
}

func (e Exit) String() string {
	s := e.Reason.String()
	switch e.Reason {
	case ExitDebug:
		s += fmt.Sprintf(" code %d", e.Code)
	case ExitCloneExit:
		s += fmt.Sprintf(" status %d", e.Code)
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}
