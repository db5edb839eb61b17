package fork

import (
	"context"
	"fmt"

	"github.com/sfvmm/sfvmm/memtap/server"
	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
)

// vmMachine adapts *vmm.VM to Machine.
type vmMachine struct{ *vmm.VM }

func (m vmMachine) Hold(ctx context.Context, caller int, result int32) (func(), error) {
	var h *vmm.Hold
	var err error
	if caller >= 0 {
		h, err = m.VM.HoldCall(ctx, caller, result)
	} else {
		h, err = m.VM.Hold(ctx, "fork")
	}
	if err != nil {
		return nil, err
	}
	return h.Release, nil
}

// SaveState captures the machine's state and freezes its disks, both in
// the hold, so that the clones' disks are as the guest left them at the
// instant its state was taken.
func (m vmMachine) SaveState() (*vmm.MachineState, error) {
	s, err := m.VM.SaveState()
	if err != nil {
		return nil, err
	}
	if s.Disks, err = m.FreezeDisks(); err != nil {
		return nil, err
	}
	return s, nil
}

func (m vmMachine) MapDisks() ([][][]byte, func(), error) { return m.VM.MapDisks() }
func (m vmMachine) CompactDisks() error                   { return m.VM.CompactDisks() }

func (m vmMachine) KeepPages() { m.Memory().KeepPages() }

func (m vmMachine) RAM() ([]RAM, error) {
	regions, bitmaps, err := m.Populated()
	if err != nil {
		return nil, err
	}
	ram := make([]RAM, len(regions))
	for i, r := range regions {
		ram[i] = RAM{GPA: r.GPA, Host: r.Host, Populated: bitmaps[i]}
	}
	return ram, nil
}

func (m vmMachine) FailCall(vcpu int, errno forkdev.Errno) { m.VM.FailCall(vcpu, int32(errno)) }

// memtapServer adapts memtap's memory server to Server.
type memtapServer struct{ *server.Server }

func newMemtapServer() (Server, error) {
	s, err := server.New(server.Config{})
	if err != nil {
		return nil, err
	}
	return memtapServer{s}, nil
}

func (s memtapServer) Arm(regions []server.Region) (Image, error) {
	im, err := s.Server.Arm(regions)
	if err != nil {
		return nil, fmt.Errorf("memory server: %w", err)
	}
	return im, nil
}
