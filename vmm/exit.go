package vmm

import (
	"fmt"
	"strconv"
	"strings"
)

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

// ParseSize parses a memory size in the style of QEMU's -m and
// Firecracker's mem_size: a number with an optional K, M, G or T suffix
// (binary units, optional trailing B or iB); a bare number means MiB.
func ParseSize(s string) (uint64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	shift := 20
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			shift, t = 10, t[:n-1]
		case 'M':
			shift, t = 20, t[:n-1]
		case 'G':
			shift, t = 30, t[:n-1]
		case 'T':
			shift, t = 40, t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional K, M, G or T suffix", s)
	}
	if v > (1<<63)>>shift {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return v << shift, nil
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
