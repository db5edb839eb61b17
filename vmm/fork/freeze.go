package fork

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"github.com/sfvmm/sfvmm/memtap/server"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
	"github.com/sfvmm/sfvmm/vmm/disk"
	"github.com/sfvmm/sfvmm/vmm/snapshot"
)

// Machine is what a fork needs of the VM it freezes (*vmm.VM, through
// vmMachine).
type Machine interface {
	// Hold stops the vCPUs until release is called. caller ≥ 0 is the
	// vCPU whose fork call asks for it, in its exit handler: its port
	// read completes with result first.
	Hold(ctx context.Context, caller int, result int32) (release func(), err error)
	// SaveState captures the machine's state, its disks frozen for the
	// clones; a hold is in force.
	SaveState() (*vmm.MachineState, error)
	// KeepPages makes guest RAM the guest frees zeroed rather than
	// dropped from now on (memory.Memory.KeepPages): write protection,
	// which freezes RAM for the clones, does not see a dropped page.
	KeepPages()
	// RAM is guest RAM, each region with the pages present now.
	RAM() ([]RAM, error)
	// MapDisks maps every layer of every disk read-only, for the memory
	// server to serve clones on other hosts; unmap undoes it.
	MapDisks() (maps [][][]byte, unmap func(), err error)
	// CompactDisks folds the disks' frozen overlays together, once no
	// clone reads an earlier fork's (disk.Disk.Compact).
	CompactDisks() error
	// FailCall makes the fork call of vCPU vcpu, whose port read already
	// completed, return errno instead.
	FailCall(vcpu int, errno forkdev.Errno)
	// CloneID is 0 for a parent.
	CloneID() uint32
	Config() vmm.Config
}

// RAM is one region of guest RAM.
type RAM struct {
	GPA       uint64
	Host      []byte
	Populated *snapshot.Bitmap
}

// Server is the parent's memory server (memtap/server's, through
// memtapServer).
type Server interface {
	// Arm write-protects regions while the guest runs; see
	// server.Server.Arm.
	Arm(regions []server.Region) (Image, error)
	Done() <-chan struct{} // closed if the server's process has gone
	PID() int
	Close() error
}

// Image is a frozen image the memory server serves.
type Image interface {
	// Seal fixes the image as regions are now, in the hold.
	Seal(regions []server.Region) error
	// Serve serves the image on l to clients holding key.
	Serve(l net.Listener, key wire.Key) error
	// Multicast makes the image's clients on other hosts a multicast
	// family, sending from iface (before Serve).
	Multicast(iface net.IP, group *net.UDPAddr, key wire.Key) error
	Close() error
}

// image is one frozen image of the parent and what clones need of it.
type image struct {
	id         uint32
	descriptor string
	frozen     Image
	unmapDisks func() // the disk layers' mappings the image serves; nil if none
	held       bool   // a checkpoint: clones may be created from it again
	live       int    // clones started from it that have not ended
	paused     time.Duration
}

// Info is what a clone needs beyond its parent's machine state: where its
// memory comes from and how to finish the call that forked it. It is of
// the parent's host, not of the guest, so it sits beside the machine state
// in the descriptor rather than in it.
type Info struct {
	Checkpoint uint32 // the fork image's ID (sf_checkpoint_parent's C)
	// Caller is the vCPU whose call forked the VM, -1 for a fork from the
	// host; Call is that call (forkdev.CallClone or CallCheckpointParent).
	Caller int32
	Call   uint32
	// Network and Address reach the parent's memory server; Key
	// authenticates the clone family to it.
	Network, Address string
	Key              [32]byte
	// ParentPID and ParentRAM (each RAM region's address in the parent)
	// let a clone that is the parent's child process read unwritten pages
	// from the parent's memory directly (memtap.ParentMemory).
	ParentPID int
	ParentRAM []uint64
	// DiskLayers are the memory server's regions after guest RAM's: each
	// one layer of a disk, mapped from its file, which a clone on another
	// host reads through the server (a fork served by TCP has them).
	DiskLayers []DiskLayer
}

// DiskLayer is a memory server region that holds a disk layer.
type DiskLayer struct {
	// Disk indexes the machine state's Disks; Layer its Layers, or is -1
	// for a layer the fork did not freeze (an overlay with nothing in it
	// yet), which no clone reads.
	Disk, Layer int32
	Size        uint64 // bytes: the disk's, in whole pages
}

// Descriptor is what a fork descriptor holds after its header.
type Descriptor struct {
	Machine vmm.MachineState
	Fork    Info
}

// freeze makes a fork image of the parent. The order is what keeps the
// parent's pause short and the image true to one instant:
//
//  1. zero the pages the guest frees from now on, rather than drop them
//     (KeepPages), and 2. arm write protection, while the guest runs:
//     arming grows with guest RAM;
//  3. hold the vCPUs, 4. save their state, 5. seal the image (protect
//     what was written or populated since arming): from the hold to the
//     seal, neither the state nor the memory can change, so they agree;
//  6. release the hold: the parent runs on, its writes now saved first;
//  7. publish the descriptor and serve the image, for the clones.
//
// caller is the vCPU whose call forks (its port read completes with the
// parent's result before the hold), -1 for a fork from the host. Every
// failure closes the image and releases the hold.
func (f *Forker) freeze(ctx context.Context, caller int, call uint32, held bool) (*image, error) {
	if !f.freezing.TryLock() {
		return nil, ErrBusy
	}
	defer f.freezing.Unlock()
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, ErrClosed
	}
	if f.image != nil && f.image.live > 0 {
		f.mu.Unlock()
		return nil, ErrBusy
	}
	old := f.image
	f.image = nil
	f.mu.Unlock()
	if old != nil {
		old.close()
	}
	// No clone of an earlier image is left (ErrBusy above): its disk
	// layers may fold, before this fork maps and freezes them.
	if err := f.m.CompactDisks(); err != nil {
		return nil, err
	}
	srv, err := f.prepare()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.lastImage++
	img := &image{id: f.lastImage, held: held}
	dir := f.dir
	f.mu.Unlock()

	l, err := f.listen(dir, img.id)
	if err != nil {
		return nil, fmt.Errorf("memory server socket: %w", err)
	}
	// Serve takes l over; until then, every failure closes it.
	defer func() {
		if l != nil {
			l.Close()
		}
	}()
	info := Info{Checkpoint: img.id, Caller: int32(caller), Call: call, Network: l.Addr().Network(),
		Address: l.Addr().String(), ParentPID: os.Getpid()}
	if _, err := rand.Read(info.Key[:]); err != nil {
		return nil, fmt.Errorf("family key: %w", err)
	}
	result := int32(0)
	if call == forkdev.CallCheckpointParent {
		result = int32(img.id)
	}

	f.m.KeepPages()
	ram, err := f.m.RAM()
	if err != nil {
		return nil, err
	}
	for _, r := range ram {
		info.ParentRAM = append(info.ParentRAM, uint64(uintptr(unsafe.Pointer(&r.Host[0]))))
	}
	// Clones on other hosts read the disks through the memory server;
	// this host's clones open the layers' files.
	var hosts [][]byte // each of info.DiskLayers' mapping
	if f.cfg.ServeAddress != "" {
		var disks [][][]byte
		if disks, img.unmapDisks, err = f.m.MapDisks(); err != nil {
			return nil, err
		}
		info.DiskLayers, hosts = diskLayers(disks)
	}
	dr, err := diskRegions(info.DiskLayers, hosts, nil)
	if err == nil {
		img.frozen, err = srv.Arm(append(serverRegions(ram), dr...))
	}
	if err != nil {
		img.close()
		return nil, err
	}
	start := time.Now()
	release, err := f.m.Hold(ctx, caller, result)
	if err != nil {
		img.close()
		return nil, err
	}
	state, err := f.m.SaveState()
	if err == nil {
		ram, err = f.m.RAM()
	}
	if err == nil {
		sealDiskLayers(info.DiskLayers, state)
		if dr, err = diskRegions(info.DiskLayers, hosts, state); err == nil {
			err = img.frozen.Seal(append(serverRegions(ram), dr...))
		}
	}
	release()
	img.paused = time.Since(start)
	if err == nil {
		err = f.publish(img, dir, l, Descriptor{Machine: *state, Fork: info}, ram)
		l = nil
	}
	if err != nil {
		img.close()
		return nil, err
	}
	f.mu.Lock()
	f.image = img
	f.mu.Unlock()
	return img, nil
}

// close stops serving the image, then unmaps its disk layers.
func (img *image) close() error {
	var err error
	if img.frozen != nil {
		err = img.frozen.Close()
		img.frozen = nil
	}
	if img.unmapDisks != nil {
		img.unmapDisks()
		img.unmapDisks = nil
	}
	return err
}

// diskLayers lists the mapped layers as memory server regions, each
// provisionally frozen (sealDiskLayers decides), and their mappings.
func diskLayers(disks [][][]byte) (dl []DiskLayer, hosts [][]byte) {
	for d, layers := range disks {
		for j, m := range layers {
			dl = append(dl, DiskLayer{Disk: int32(d), Layer: int32(j), Size: uint64(len(m))})
			hosts = append(hosts, m)
		}
	}
	return dl, hosts
}

// sealDiskLayers marks the layers the fork did not freeze (state.Disks
// has fewer) as -1.
func sealDiskLayers(dl []DiskLayer, state *vmm.MachineState) {
	for i, l := range dl {
		if int(l.Disk) >= len(state.Disks) || int(l.Layer) >= len(state.Disks[l.Disk].Layers) {
			dl[i].Layer = -1
		}
	}
}

// diskRegions are the disk layers as memory server regions, with the
// blocks each holds as its populated set: every block of a base image,
// an overlay's own, none of a layer not frozen. Before the freeze (state
// nil) every block: only write protection, which these regions do not
// take, looks at it then.
func diskRegions(dl []DiskLayer, hosts [][]byte, state *vmm.MachineState) ([]server.Region, error) {
	var regions []server.Region
	for i, l := range dl {
		var st *disk.State
		if state != nil {
			st = &state.Disks[l.Disk]
		}
		blocks, err := layerBlocks(l, st)
		if err != nil {
			return nil, err
		}
		regions = append(regions, server.Region{Host: hosts[i], Frozen: true, Populated: blocks})
	}
	return regions, nil
}

// layerBlocks is the set of blocks layer l holds in the frozen disk st
// (nil: every block).
func layerBlocks(l DiskLayer, st *disk.State) (*snapshot.Bitmap, error) {
	pages := l.Size / disk.BlockSize
	b := snapshot.NewBitmap(pages)
	switch {
	case st != nil && l.Layer < 0:
		return b, nil // none
	case st == nil || l.Layer == 0:
		b.SetRange(0, pages)
		return b, nil
	}
	if err := b.UnmarshalBinary(st.Layers[l.Layer].Blocks); err != nil {
		return nil, fmt.Errorf("disk %d layer %d: block map: %w", l.Disk, l.Layer, err)
	}
	if b.Len() != pages {
		return nil, fmt.Errorf("disk %d layer %d: block map of %d blocks for %d", l.Disk, l.Layer, b.Len(), pages)
	}
	return b, nil
}

func serverRegions(ram []RAM) []server.Region {
	regions := make([]server.Region, len(ram))
	for i, r := range ram {
		regions[i] = server.Region{Host: r.Host, Populated: r.Populated}
	}
	return regions
}

// prepare makes the fork directory and starts the memory server, before
// the parent is held.
func (f *Forker) prepare() (Server, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	if f.dir == "" {
		if f.cfg.Dir != "" {
			if err := os.MkdirAll(f.cfg.Dir, 0o700); err != nil {
				return nil, fmt.Errorf("fork directory: %w", err)
			}
			f.dir = f.cfg.Dir
		} else {
			d, err := os.MkdirTemp("", "sfvmm-fork-")
			if err != nil {
				return nil, fmt.Errorf("fork directory: %w", err)
			}
			f.dir, f.madeDir = d, true
		}
	}
	if f.srv != nil {
		select {
		case <-f.srv.Done(): // the server died (or was killed): start afresh
			f.srv.Close()
			f.srv = nil
		default:
		}
	}
	if f.srv == nil {
		s, err := f.cfg.NewServer()
		if err != nil {
			return nil, fmt.Errorf("start the memory server: %w", err)
		}
		f.srv = s
		f.srvPID.Store(int32(s.PID()))
	}
	return f.srv, nil
}

// listen opens the socket on which image id's memory server will serve:
// a Unix socket in dir, or TCP at Config.ServeAddress for clones on other
// hosts.
func (f *Forker) listen(dir string, id uint32) (net.Listener, error) {
	if f.cfg.ServeAddress != "" {
		return net.Listen("tcp", f.cfg.ServeAddress)
	}
	path := filepath.Join(dir, fmt.Sprintf("image-%d.sock", id))
	os.Remove(path)
	return net.Listen("unix", path)
}

// publish writes the fork descriptor and lets the memory server serve the
// image on l, which it takes over (closing it on failure).
func (f *Forker) publish(img *image, dir string, l net.Listener, d Descriptor, ram []RAM) error {
	cfg := f.m.Config()
	h := snapshot.Header{CPUs: uint32(cfg.CPUs), MemBytes: cfg.MemBytes, CreatedUnixNano: time.Now().UnixNano()}
	for _, r := range ram {
		h.Memory = append(h.Memory, snapshot.MemoryRegion{GPA: r.GPA, Size: uint64(len(r.Host)), Pages: r.Populated})
	}
	b, err := snapshot.Encode(h, &d)
	if err != nil {
		return fmt.Errorf("encode fork descriptor: %w", err)
	}
	img.descriptor = filepath.Join(dir, fmt.Sprintf("image-%d.sfd", img.id))
	if err := writeFileAtomic(img.descriptor, b); err != nil {
		return fmt.Errorf("write fork descriptor: %w", err)
	}
	if f.cfg.Multicast {
		tl, ok := l.Addr().(*net.TCPAddr)
		if !ok {
			l.Close()
			return errors.New("multicast needs a TCP memory server (ServeAddress)")
		}
		// Multicast is an optimisation: where this host cannot send to
		// a group, clones get their pages by unicast, as they do where
		// the network drops the group's datagrams.
		group := server.NewGroup()
		if err := img.frozen.Multicast(tl.IP, group, wire.Key(d.Fork.Key)); err != nil {
			f.infof("fork: image %d: no multicast (%v): pages for other hosts by unicast", img.id, err)
		} else {
			f.infof("fork: image %d: pages for other hosts multicast to %v from %v", img.id, group, tl.IP)
		}
	}
	if err := img.frozen.Serve(l, wire.Key(d.Fork.Key)); err != nil {
		return fmt.Errorf("memory server: %w", err)
	}
	return nil
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
