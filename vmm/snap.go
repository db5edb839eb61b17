package vmm

import (
	"context"
	"fmt"
	"time"

	"github.com/sfvmm/sfvmm/vmm/memory"
	"github.com/sfvmm/sfvmm/vmm/snapshot"
)

// SnapshotOptions says how to take a snapshot.
type SnapshotOptions struct {
	StayPaused bool // leave the guest paused afterwards
	Overwrite  bool // replace an existing snapshot directory
}

// SnapshotInfo reports what a snapshot wrote and what it cost the guest.
type SnapshotInfo struct {
	Dir             string
	DescriptorBytes int
	MemoryBytes     uint64 // guest memory written (populated, non-zero pages)
	Pages           uint64
	Paused          time.Duration // how long the guest was stopped for it
	Write           time.Duration // of which writing the files
}

// Snapshot holds the guest, writes its state and populated memory to dir
// atomically, and lets it run again unless opts.StayPaused (which leaves
// the user's pause in force, as Pause does) or another hold is in force.
func (m *VM) Snapshot(ctx context.Context, dir string, opts SnapshotOptions) (SnapshotInfo, error) {
	start := time.Now()
	h, err := m.Hold(ctx, "snapshot")
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer h.Release()
	state, err := m.SaveState()
	if err != nil {
		return SnapshotInfo{}, err
	}
	info, err := m.writeSnapshot(dir, state, opts)
	info.Paused = time.Since(start)
	if err == nil && opts.StayPaused {
		err = m.Pause(ctx)
	}
	return info, err
}

func (m *VM) writeSnapshot(dir string, state *MachineState, opts SnapshotOptions) (SnapshotInfo, error) {
	start := time.Now()
	regions, bitmaps, err := m.Populated()
	if err != nil {
		return SnapshotInfo{}, err
	}
	h := snapshot.Header{CPUs: uint32(m.cfg.CPUs), MemBytes: m.mem.Size(), CreatedUnixNano: time.Now().UnixNano()}
	// The disks' copies go into the snapshot's directory: a snapshot
	// must not depend on images the machine goes on writing.
	state.Disks = m.snapshotDisks()
	wi, err := snapshot.Write(dir, h, state, regions, bitmaps, snapshot.WriteOptions{Overwrite: opts.Overwrite, Files: m.copyDisks})
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot %s: %w", dir, err)
	}
	return SnapshotInfo{
		Dir: dir, DescriptorBytes: wi.DescriptorBytes, MemoryBytes: wi.MemoryBytes,
		Pages: wi.Pages, Write: time.Since(start),
	}, nil
}

// Populated returns guest RAM as snapshot regions with a bitmap of the
// pages present in host memory (touched by guest or loader); pages never
// touched read as zero and are left out.
func (m *VM) Populated() ([]snapshot.Region, []*snapshot.Bitmap, error) {
	var regions []snapshot.Region
	var bitmaps []*snapshot.Bitmap
	for _, r := range m.mem.Regions() {
		vec, err := r.Residency()
		if err != nil {
			return nil, nil, err
		}
		regions = append(regions, snapshot.Region{GPA: r.GPA, Host: r.Host})
		bitmaps = append(bitmaps, snapshot.FromResidency(vec))
	}
	return regions, bitmaps, nil
}

// RestoreDir rebuilds a machine from the snapshot in dir, paused: Run
// continues the guest where the snapshot was taken.
func RestoreDir(dir string, rc RestoreConfig) (*VM, error) {
	var state MachineState
	h, err := snapshot.Read(dir, &state)
	if err != nil {
		return nil, err
	}
	if h.CPUs != state.Config.CPUs || h.MemBytes != state.Config.MemBytes {
		return nil, fmt.Errorf("snapshot %s: header (%d vCPUs, %d bytes) disagrees with state (%d vCPUs, %d bytes)",
			dir, h.CPUs, h.MemBytes, state.Config.CPUs, state.Config.MemBytes)
	}
	rc.DiskDir = dir
	return Restore(&state, func(mem *memory.Memory) (MemorySource, error) {
		for i, r := range mem.Regions() {
			if i >= len(h.Memory) || h.Memory[i].GPA != r.GPA || h.Memory[i].Size != r.Size {
				return nil, fmt.Errorf("snapshot %s: memory layout does not match %s of RAM", dir, FormatSize(mem.Size()))
			}
		}
		// Map the memory file copy-on-write instead of reading it: the
		// guest starts at once and its pages arrive as it touches them.
		f, offs, err := snapshot.OpenMemory(dir, h)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return nil, mem.MapFile(f, offs)
	}, rc)
}

// ReadSnapshot decodes the snapshot in dir without restoring it, for
// `sfvmm describe`.
func ReadSnapshot(dir string) (snapshot.Header, *MachineState, error) {
	var state MachineState
	h, err := snapshot.Read(dir, &state)
	if err != nil {
		return h, nil, err
	}
	return h, &state, nil
}
