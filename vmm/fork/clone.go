package fork

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/memtap"
	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
	"github.com/sfvmm/sfvmm/vmm/disk"
	"github.com/sfvmm/sfvmm/vmm/memory"
	"github.com/sfvmm/sfvmm/vmm/snapshot"
)

// MaxDescriptor bounds the fork descriptor file read into memory.
const MaxDescriptor = 64 << 20

// versionHead is the length of a descriptor's magic and version, which
// every version begins with.
const versionHead = 12

// CloneConfig is what a clone takes from its launcher.
type CloneConfig struct {
	vmm.RestoreConfig
	// ID is the clone's ID within its ticket, 1 or more.
	ID uint32
	// Memtap tunes the clone's memory client; Regions, Network, Address
	// and Key come from the descriptor.
	Memtap memtap.Config
	// DirectReads lets memtap read pages the parent has not written
	// straight from the parent's memory (memtap.ParentMemory) when the
	// clone is the parent's child process (sfvmm clone does by default).
	// A stopped memory server can hold such a read up; memtap fails the
	// clone once the read has been blocked for its timeout, as for a
	// silent server.
	DirectReads bool
	// LocalDisks: the clone is on its parent's host (its launcher knows)
	// and opens the disks' layer files; otherwise it reads them through
	// the memory server.
	LocalDisks bool
}

// RestoreClone builds clone cfg.ID of the fork descriptor at path, paused:
// its RAM starts empty and fills from the parent's memory server as it is
// touched (package memtap), through the returned client, which the
// machine owns; its forking call returns its clone ID.
func RestoreClone(path string, cfg CloneConfig) (*vmm.VM, *memtap.Client, error) {
	if cfg.ID == 0 {
		return nil, nil, errors.New("clone: ID 0 is the parent's")
	}
	d, h, err := ReadDescriptor(path)
	if err != nil {
		return nil, nil, fmt.Errorf("clone: %w", err)
	}
	state, fi := &d.Machine, d.Fork
	state.Devices.Fork.ID = cfg.ID
	if state.Config.Devices.VsockCID != 0 {
		// Each clone of a ticket its own vsock address: the parent's
		// plus its ID.
		cid := state.Devices.Vsock.CID + uint64(cfg.ID)
		if cid >= 1<<32-1 {
			return nil, nil, fmt.Errorf("clone %d: vsock CID %d past the last (parent's %d)", cfg.ID, cid, state.Devices.Vsock.CID)
		}
		state.Devices.Vsock.CID = cid
	}
	if fi.Caller >= 0 {
		if err := finishForkCall(state, fi, cfg.ID); err != nil {
			return nil, nil, fmt.Errorf("clone: %s: %w", path, err)
		}
	}
	layers, err := mapDiskLayers(fi.DiskLayers, state)
	if err != nil {
		return nil, nil, fmt.Errorf("clone: %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			for _, l := range layers {
				l.Close()
			}
		}
	}()
	// A clone its launcher put on the parent's host opens the disks'
	// layers; any other reads them through the memory server. The
	// descriptor does not decide: it names files of the parent's host,
	// which on another host could be anything.
	if len(state.Disks) > 0 && !cfg.LocalDisks {
		if len(layers) == 0 {
			return nil, nil, fmt.Errorf("clone: %s: its disks can be read only on the parent's host (the fork serves them on no network)", path)
		}
		cfg.RestoreConfig.DiskSource = func(d, j int) (io.ReaderAt, error) {
			for _, l := range layers {
				if l.disk == d && l.layer == j {
					return l, nil
				}
			}
			return nil, fmt.Errorf("%w: the memory server does not serve disk %d layer %d", snapshot.ErrCorrupt, d, j)
		}
	}
	var client *memtap.Client
	m, err := vmm.Restore(state, func(mem *memory.Memory) (vmm.MemorySource, error) {
		regions := mem.Regions()
		if len(regions) != len(h.Memory) {
			return nil, fmt.Errorf("%d RAM regions, the descriptor has %d", len(regions), len(h.Memory))
		}
		mc := cfg.Memtap
		mc.Regions = nil
		for i, r := range regions {
			if h.Memory[i].GPA != r.GPA || h.Memory[i].Size != r.Size {
				return nil, fmt.Errorf("RAM region %d at %#x (%d bytes), the descriptor has it at %#x (%d bytes)",
					i, r.GPA, r.Size, h.Memory[i].GPA, h.Memory[i].Size)
			}
			mc.Regions = append(mc.Regions, memtap.Region{Host: r.Host, Populated: h.Memory[i].Pages})
		}
		for _, l := range layers {
			mc.Regions = append(mc.Regions, memtap.Region{Host: l.host, Populated: l.blocks, Exact: true})
		}
		mc.Network, mc.Address, mc.Key = fi.Network, fi.Address, memtap.Key(fi.Key)
		if cfg.DirectReads {
			if mc.Parent = directParent(fi, len(regions), len(layers), cfg.Log); mc.Parent != nil {
				defer mc.Parent.Close()
			}
		}
		c, err := memtap.Start(mc)
		if err != nil {
			return nil, err
		}
		client = c
		return c, nil
	}, cfg.RestoreConfig)
	if err != nil {
		return nil, nil, err
	}
	// A clone never forks, so no one opens its overlays by path: gone
	// now, they cannot outlive it when it is killed (sf_kill).
	if err := m.UnlinkDiskOverlays(); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("clone: %w", err)
	}
	return m, client, nil
}

// ReadDescriptor reads and checks the fork descriptor at path. A
// descriptor of another version is refused as such (snapshot.ErrVersion,
// naming both versions) whatever its size: this version's size bound says
// nothing of another's, so the version is checked first.
func ReadDescriptor(path string) (*Descriptor, snapshot.Header, error) {
	var h snapshot.Header
	f, err := os.Open(path)
	if err != nil {
		return nil, h, err
	}
	defer f.Close()
	// Every version's descriptor opens with the magic and the version
	// (package snapshot's doc), which DecodeHeader checks before anything
	// else: on these bytes alone it refuses another version.
	head := make([]byte, versionHead)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return nil, h, fmt.Errorf("read %s: %w", path, err)
	}
	if _, err := snapshot.DecodeHeader(head[:n]); errors.Is(err, snapshot.ErrVersion) {
		return nil, h, fmt.Errorf("%s: %w", path, err)
	}
	b, err := io.ReadAll(io.LimitReader(io.MultiReader(bytes.NewReader(head[:n]), f), MaxDescriptor+1))
	if err != nil {
		return nil, h, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > MaxDescriptor {
		return nil, h, fmt.Errorf("%s: larger than any fork descriptor (%d bytes)", path, MaxDescriptor)
	}
	var d Descriptor
	if h, err = snapshot.Decode(b, &d); err != nil {
		if _, serr := snapshot.Decode(b, &vmm.MachineState{}); serr == nil {
			return nil, h, fmt.Errorf("%s is a snapshot, not a fork descriptor", path)
		}
		return nil, h, fmt.Errorf("%s: %w", path, err)
	}
	if d.Fork.Address == "" {
		return nil, h, fmt.Errorf("%s is not a fork descriptor (it names no memory server)", path)
	}
	if len(h.Memory) == 0 {
		return nil, h, fmt.Errorf("%s: %w: no memory layout", path, snapshot.ErrCorrupt)
	}
	return &d, h, nil
}

// layerMap is a disk layer the memory server serves, as a clone maps it:
// fresh anonymous memory that memtap fills as the disk reads it.
type layerMap struct {
	disk, layer int
	host        []byte
	blocks      *snapshot.Bitmap
	once        sync.Once
}

// ReadAt reads the layer, each page fetched as it is touched.
func (l *layerMap) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(l.host)) {
		return 0, io.EOF
	}
	n := copy(p, l.host[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (l *layerMap) Close() error {
	var err error
	l.once.Do(func() { err = unix.Munmap(l.host) })
	return err
}

// mapDiskLayers maps memory for each disk layer the memory server serves,
// after checking the descriptor's list against the disks: it comes from
// the parent's host, and a wrong entry must not make the clone misread.
func mapDiskLayers(dl []DiskLayer, state *vmm.MachineState) (maps []*layerMap, err error) {
	defer func() {
		if err != nil {
			for _, m := range maps {
				m.Close()
			}
		}
	}()
	type key struct{ disk, layer int32 }
	seen := map[key]bool{}
	for i, l := range dl {
		if l.Disk < 0 || int(l.Disk) >= len(state.Disks) || l.Layer < -1 || int(l.Layer) >= len(state.Disks[l.Disk].Layers) {
			return nil, fmt.Errorf("%w: disk layer region %d names disk %d layer %d", snapshot.ErrCorrupt, i, l.Disk, l.Layer)
		}
		// One region per layer, and at most one not frozen per disk:
		// each costs the memory client state for the disk's size.
		k := key{l.Disk, l.Layer}
		if seen[k] {
			return nil, fmt.Errorf("%w: disk %d layer %d served twice", snapshot.ErrCorrupt, l.Disk, l.Layer)
		}
		seen[k] = true
		if want := disk.PageAligned(state.Disks[l.Disk].Size); l.Size != want {
			return nil, fmt.Errorf("%w: disk layer region %d of %d bytes, the disk has %d", snapshot.ErrCorrupt, i, l.Size, want)
		}
		blocks, err := layerBlocks(l, &state.Disks[l.Disk])
		if err != nil {
			return nil, fmt.Errorf("%w: %w", snapshot.ErrCorrupt, err)
		}
		host, err := unix.Mmap(-1, 0, int(l.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			return nil, fmt.Errorf("map disk %d layer %d: %w", l.Disk, l.Layer, err)
		}
		maps = append(maps, &layerMap{disk: int(l.Disk), layer: int(l.Layer), host: host, blocks: blocks})
	}
	if len(dl) > 0 {
		for d, st := range state.Disks {
			for j := range st.Layers {
				if !seen[key{int32(d), int32(j)}] {
					return nil, fmt.Errorf("%w: disk %d layer %d is not served", snapshot.ErrCorrupt, d, j)
				}
			}
		}
	}
	return maps, nil
}

// directParent opens the parent's memory for memtap's direct reads when
// the clone is the parent's own child process (so that the PID in the
// descriptor cannot name another process); nil otherwise, or if the
// parent's memory cannot be opened (then every page comes through the
// memory server, which is said).
//
// The disk layers' regions, which follow RAM's, get no address: a clone on
// its parent's host reads the layers' files, never those regions.
func directParent(fi Info, regions, layers int, log *slog.Logger) *memtap.ParentMemory {
	if fi.ParentPID == 0 || fi.ParentPID != os.Getppid() || len(fi.ParentRAM) != regions {
		return nil
	}
	pm, err := memtap.OpenParent(fi.ParentPID, append(fi.ParentRAM, make([]uint64, layers)...))
	if err != nil {
		if log != nil {
			log.Info(fmt.Sprintf("every page through the memory server: %v", err))
		}
		return nil
	}
	return pm
}

// finishForkCall makes the forking call return in the clone what a clone
// sees: its ID from sf_clone, 0 from sf_checkpoint_parent. The parent's
// state was saved with the call completed, so only RAX changes.
func finishForkCall(s *vmm.MachineState, fi Info, id uint32) error {
	for i := range s.VCPUs {
		v := &s.VCPUs[i]
		if int32(v.ID) != fi.Caller {
			continue
		}
		switch fi.Call {
		case forkdev.CallClone:
			v.Regs.RAX = uint64(id)
		case forkdev.CallCheckpointParent:
			v.Regs.RAX = 0
		default:
			return fmt.Errorf("%w: fork call %d", snapshot.ErrCorrupt, fi.Call)
		}
		return nil
	}
	return fmt.Errorf("%w: the forking vCPU %d does not exist", snapshot.ErrCorrupt, fi.Caller)
}
