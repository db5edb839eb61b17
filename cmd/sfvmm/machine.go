package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/sfvmm/sfvmm/memtap"
	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/api"
	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
	"github.com/sfvmm/sfvmm/vmm/fork"
)

// machine serves a VM through the control API.
type machine struct {
	vm      *vmm.VM
	fork    *fork.Forker   // nil when fork is disabled
	memtap  *memtap.Client // a clone's memory client; nil for a parent
	apiSock string         // where it is served, from which clones' sockets derive
}

// errForkDisabled: a fork operation on a machine started without fork.
var errForkDisabled = errors.New("this machine has fork disabled (--fork-capacity 0)")

// conflict gives err the API error class that fits it.
func conflict(err error) error {
	switch {
	case errors.Is(err, vmm.ErrStopped), errors.Is(err, fork.ErrBusy), errors.Is(err, fork.ErrClosed), errors.Is(err, fork.ErrClone):
		return fmt.Errorf("%w: %v", api.ErrConflict, err)
	case errors.Is(err, forkdev.ENOTICKET), errors.Is(err, errForkDisabled):
		return fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	return err
}

func (m machine) Pause(ctx context.Context) error  { return conflict(m.vm.Pause(ctx)) }
func (m machine) Resume(ctx context.Context) error { return conflict(m.vm.Resume(ctx)) }

func (m machine) Snapshot(ctx context.Context, req api.SnapshotRequest) (api.SnapshotInfo, error) {
	i, err := m.vm.Snapshot(ctx, req.Dir, vmm.SnapshotOptions{StayPaused: req.StayPaused, Overwrite: req.Overwrite})
	if err != nil {
		return api.SnapshotInfo{}, conflict(err)
	}
	return api.SnapshotInfo{
		Dir: i.Dir, DescriptorBytes: int64(i.DescriptorBytes), MemoryBytes: int64(i.MemoryBytes),
		Pages: i.Pages, PausedNanos: i.Paused.Nanoseconds(), WriteNanos: i.Write.Nanoseconds(),
	}, nil
}

func (m machine) Status() api.Status {
	c := m.vm.Config()
	st := api.Status{
		State: m.vm.RunState(), CPUs: c.CPUs, MemBytes: c.MemBytes, Kernel: c.KernelPath,
		UptimeNanos: m.vm.Uptime().Nanoseconds(), PID: os.Getpid(),
		CloneID: m.vm.CloneID(),
	}
	if m.fork != nil {
		st.MemoryServerPID = m.fork.MemoryServerPID()
	}
	if m.memtap != nil {
		s := m.memtap.Stats()
		st.Memtap = &api.MemtapStats{
			Faults: s.Faults, PagesFetched: s.PagesFetched, PagesDirect: s.PagesDirect, PagesZeroFilled: s.PagesZeroFilled,
			PagesPrefetched: s.PagesPrefetched, PagesExact: s.PagesExact, Requests: s.Requests, BytesReceived: s.BytesReceived,
			FaultLatencyMicros: s.FaultLatency[:],
		}
	}
	return st
}
