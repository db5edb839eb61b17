package vmm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/memtap/server"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
	"github.com/sfvmm/sfvmm/vmm/snapshot"
)

// ForkConfig enables VM fork: the fork device's calls from the guest, and
// Fork from the host.
type ForkConfig struct {
	// Capacity is how many clone slots the VM's tickets may hold at once
	// (default DefaultCapacity).
	Capacity int
	// Launcher starts clones.
	Launcher Launcher
	// Dir holds the fork images (descriptor, the memory server's socket);
	// empty means a new temporary directory, removed at Close.
	Dir string
}

// DefaultCapacity is the clone slots a VM offers when ForkConfig says none.
const DefaultCapacity = 16

// Launcher starts the clones of a fork image.
type Launcher interface {
	// Launch starts clone id of ticket from the fork descriptor at path.
	// It returns once the clone is on its way; Clone.Wait says how it
	// ended.
	Launch(descriptor string, ticket, id uint32) (Clone, error)
}

// Clone is a started clone, as its launcher knows it.
type Clone interface {
	// Wait blocks until the clone has ended. It returns nil if the clone
	// ended with sf_exit(0) or powered off, and otherwise says how it
	// ended. It may be called once.
	Wait() error
	// Kill ends the clone now; Wait then returns.
	Kill() error
}

// ForkInfo is what a clone needs beyond its parent's state: where its
// memory comes from and how to finish the call that forked it.
type ForkInfo struct {
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
}

// ForkResult reports a fork.
type ForkResult struct {
	Ticket     uint32
	Clones     []uint32 // clone IDs
	Checkpoint uint32
	Descriptor string        // the fork descriptor's path
	Paused     time.Duration // how long the parent was stopped
}

// forker is a VM's fork state: tickets, the frozen image and its clones.
type forker struct {
	cfg ForkConfig

	// mu guards everything below. It is never held while vCPUs are being
	// paused: a vCPU blocked on it in an exit handler could not park.
	mu         sync.Mutex
	freezing   bool // a freeze is under way (mu is released meanwhile)
	dir        string
	madeDir    bool // dir is ours to remove
	srv        *server.Server
	srvPID     atomic.Int32 // srv's helper, for Status, which must not wait on mu
	image      *forkImage
	lastImage  uint32
	lastTicket uint32
	tickets    map[uint32]*ticket
	inUse      int           // slots the tickets hold
	changed    chan struct{} // closed and replaced when a clone ends
	closed     bool
}

// forkImage is one frozen image of the parent and what clones need of it.
type forkImage struct {
	id         uint32
	descriptor string
	frozen     *server.Image
	held       bool // a checkpoint: clones may be created from it again
	live       int  // clones started from it that have not ended
	paused     time.Duration
}

// ticket is a reservation of clone slots and, once used, its clones.
type ticket struct {
	id, slots uint32
	used      bool
	clones    []*cloneRun
}

// cloneRun is one clone of a ticket.
type cloneRun struct {
	id   uint32
	c    Clone // nil if it could not be started
	done chan struct{}
	err  error // how it ended, set before done is closed
}

func newForker(cfg ForkConfig) *forker {
	if cfg.Capacity <= 0 {
		cfg.Capacity = DefaultCapacity
	}
	return &forker{cfg: cfg, tickets: map[uint32]*ticket{}, changed: make(chan struct{})}
}

// forkHost is the fork device's Host: the VM and the calling context.
type forkHost struct{ m *VM }

func (h forkHost) RequestTicket(n uint32) (int32, forkdev.Errno) {
	t, err := h.m.fork.requestTicket(n)
	if err != 0 {
		return 0, err
	}
	// A fork is coming: start the memory server now, while the guest
	// runs, rather than in sf_clone. (An error shows again there.)
	go h.m.fork.prepare()
	return int32(t.id), 0
}

func (h forkHost) TicketSlots(id uint32) (int32, forkdev.Errno) {
	f := h.m.fork
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tickets[id]
	if !ok {
		return 0, forkdev.ENOTICKET
	}
	return int32(t.slots), 0
}

func (h forkHost) Clone(vcpu int, id uint32) (int32, forkdev.Errno) {
	m := h.m
	t, err := m.fork.takeTicket(id)
	if err != 0 {
		return 0, err
	}
	img, ferr := m.freeze(context.Background(), m.vcpus[vcpu], forkdev.CallClone, false)
	if ferr != nil {
		m.fork.untakeTicket(t)
		m.logf("sf_clone: %v", ferr)
		return m.failCall(vcpu, forkdev.EFORK)
	}
	m.logf("fork: ticket %d: sf_clone of %d clones, parent paused %v", t.id, t.slots, img.paused.Round(time.Microsecond))
	m.fork.launch(m, img, t)
	return 0, 0
}

func (h forkHost) CheckpointParent(vcpu int) (int32, forkdev.Errno) {
	m := h.m
	img, err := m.freeze(context.Background(), m.vcpus[vcpu], forkdev.CallCheckpointParent, true)
	if errors.Is(err, ErrForkBusy) {
		return 0, forkdev.EBUSY
	}
	if err != nil {
		m.logf("sf_checkpoint_parent: %v", err)
		return m.failCall(vcpu, forkdev.EFORK)
	}
	return int32(img.id), 0
}

func (h forkHost) CreateClones(checkpoint, id uint32) forkdev.Errno {
	f := h.m.fork
	f.mu.Lock()
	img := f.image
	ok := img != nil && img.id == checkpoint && img.held
	f.mu.Unlock()
	if !ok {
		return forkdev.ENOCHECKPT
	}
	t, err := f.takeTicket(id)
	if err != 0 {
		return err
	}
	f.launch(h.m, img, t)
	return 0
}

func (h forkHost) Join(id uint32, wait time.Duration) (int32, forkdev.Errno) {
	return h.m.fork.join(id, wait)
}

func (h forkHost) Kill(id uint32) forkdev.Errno { return h.m.fork.kill(id) }

// failCall makes a fork call that already completed its port I/O (with
// the success value) return err instead, by rewriting the caller's RAX.
func (m *VM) failCall(vcpu int, err forkdev.Errno) (int32, forkdev.Errno) {
	c := m.vcpus[vcpu]
	r, gerr := c.GetRegs()
	if gerr == nil {
		r.RAX = uint64(uint32(int32(err)))
		gerr = c.SetRegs(r)
	}
	if gerr != nil {
		m.stop(Exit{Reason: ExitError, Err: fmt.Errorf("vcpu %d: return a failed fork call: %w", vcpu, gerr)})
	}
	return 0, err
}

func (f *forker) requestTicket(n uint32) (*ticket, forkdev.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if int64(n) > int64(f.cfg.Capacity) {
		return nil, forkdev.ECAPACITY
	}
	m := min(int(n), f.cfg.Capacity-f.inUse)
	if m <= 0 {
		return nil, forkdev.ECAPACITY
	}
	f.lastTicket++
	t := &ticket{id: f.lastTicket, slots: uint32(m)}
	f.tickets[t.id] = t
	f.inUse += m
	return t, 0
}

// takeTicket marks a ticket as used by the fork about to happen.
func (f *forker) takeTicket(id uint32) (*ticket, forkdev.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tickets[id]
	switch {
	case !ok:
		return nil, forkdev.ENOTICKET
	case t.used:
		return nil, forkdev.ETICKETUSED
	}
	t.used = true
	return t, 0
}

func (f *forker) untakeTicket(t *ticket) {
	f.mu.Lock()
	t.used = false
	f.mu.Unlock()
}

// ErrForkBusy: a fork while the last one's image still serves live clones
// (one image is frozen at a time).
var ErrForkBusy = errors.New("a frozen image is still in use by live clones")

// ErrForkDisabled: a fork operation on a machine started without fork.
var ErrForkDisabled = errors.New("this machine has fork disabled")

// freeze write-protects guest RAM for the memory server, then pauses the
// parent, captures its state, seals the image and resumes the parent.
// caller is the vCPU whose port read asked for it (its I/O is completed
// first, with the parent's result), nil for a fork from the host. The
// pause covers state capture, the populated set (mincore) and protecting
// what changed since the write-protection: nothing that grows with the
// memory's contents. The descriptor is written after the parent runs
// again.
func (m *VM) freeze(ctx context.Context, caller *vcpu, call uint32, held bool) (*forkImage, error) {
	f := m.fork
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, ErrStopped
	}
	if f.freezing || (f.image != nil && f.image.live > 0) {
		f.mu.Unlock()
		return nil, ErrForkBusy
	}
	f.freezing = true
	old := f.image
	f.image = nil
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.freezing = false
		f.mu.Unlock()
	}()
	if old != nil {
		old.frozen.Close()
	}
	if err := f.prepare(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.lastImage++
	img := &forkImage{id: f.lastImage, held: held}
	f.mu.Unlock()

	info := ForkInfo{Checkpoint: img.id, Caller: -1, Call: call, Network: "unix",
		Address: filepath.Join(f.dir, fmt.Sprintf("image-%d.sock", img.id)), ParentPID: os.Getpid()}
	for _, r := range m.mem.Regions() {
		info.ParentRAM = append(info.ParentRAM, uint64(uintptr(unsafe.Pointer(&r.Host[0]))))
	}
	if _, err := rand.Read(info.Key[:]); err != nil {
		return nil, fmt.Errorf("family key: %w", err)
	}
	parentResult := int32(0)
	if call == forkdev.CallCheckpointParent {
		parentResult = int32(img.id)
	}

	// Guest RAM is on huge pages until the first fork: a Linux boot on
	// 4 KiB pages takes 20 times as many stage-2 faults (see forkPages).
	if err := m.mem.SplitHugePages(); err != nil {
		return nil, err
	}
	// Write-protect guest RAM while the guest runs (the part that grows
	// with memory); the pause then seals what changed since.
	regions, _, err := m.serverRegions()
	if err != nil {
		return nil, err
	}
	if img.frozen, err = f.srv.Arm(regions); err != nil {
		return nil, err
	}
	start := time.Now()
	wasPaused := m.RunState() == "paused"
	if caller != nil {
		info.Caller = int32(caller.ID)
		if err := m.parkSelf(caller, parentResult); err != nil {
			img.frozen.Close()
			return nil, err
		}
		defer m.unparkSelf(caller)
	}
	state, err := m.SaveState(ctx)
	var bitmaps []*snapshot.Bitmap
	if err == nil {
		regions, bitmaps, err = m.serverRegions()
	}
	if err == nil {
		err = img.frozen.Seal(regions)
	}
	if !wasPaused {
		if rerr := m.Resume(ctx); err == nil {
			err = rerr
		}
	}
	img.paused = time.Since(start)
	if err != nil {
		img.frozen.Close()
		return nil, err
	}
	state.Fork = info
	if err := m.publish(img, state, bitmaps, info); err != nil {
		img.frozen.Close()
		return nil, err
	}
	f.mu.Lock()
	f.image = img
	f.mu.Unlock()
	return img, nil
}

// serverRegions is guest RAM with the pages present now, for the memory
// server.
func (m *VM) serverRegions() ([]server.Region, []*snapshot.Bitmap, error) {
	sregions, bitmaps, err := m.populated()
	if err != nil {
		return nil, nil, err
	}
	regions := make([]server.Region, len(sregions))
	for i, r := range sregions {
		regions[i] = server.Region{Host: r.Host, Populated: bitmaps[i]}
	}
	return regions, bitmaps, nil
}

// prepare makes the fork directory and starts the memory server, before
// the parent is paused.
func (f *forker) prepare() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrStopped
	}
	if f.dir == "" {
		if f.cfg.Dir != "" {
			if err := os.MkdirAll(f.cfg.Dir, 0o700); err != nil {
				return fmt.Errorf("fork directory: %w", err)
			}
			f.dir = f.cfg.Dir
		} else {
			d, err := os.MkdirTemp("", "sfvmm-fork-")
			if err != nil {
				return fmt.Errorf("fork directory: %w", err)
			}
			f.dir, f.madeDir = d, true
		}
	}
	if f.srv != nil {
		select {
		case <-f.srv.Done(): // the helper died (or was killed): start afresh
			f.srv.Close()
			f.srv = nil
		default:
		}
	}
	if f.srv == nil {
		s, err := server.New(server.Config{})
		if err != nil {
			return fmt.Errorf("start the memory server: %w", err)
		}
		f.srv = s
		f.srvPID.Store(int32(s.PID()))
	}
	return nil
}

// publish writes the fork descriptor and lets the memory server serve the
// image on its socket.
func (m *VM) publish(img *forkImage, state *MachineState, bitmaps []*snapshot.Bitmap, info ForkInfo) error {
	h := snapshot.Header{CPUs: uint32(m.cfg.CPUs), MemBytes: m.mem.Size(), CreatedUnixNano: time.Now().UnixNano()}
	for i, r := range m.mem.Regions() {
		h.Memory = append(h.Memory, snapshot.MemoryRegion{GPA: r.GPA, Size: r.Size, Pages: bitmaps[i]})
	}
	b, err := snapshot.Encode(h, state)
	if err != nil {
		return fmt.Errorf("encode fork descriptor: %w", err)
	}
	img.descriptor = filepath.Join(m.fork.dir, fmt.Sprintf("image-%d.sfd", img.id))
	if err := writeFileAtomic(img.descriptor, b); err != nil {
		return fmt.Errorf("write fork descriptor: %w", err)
	}
	os.Remove(info.Address)
	l, err := net.Listen("unix", info.Address)
	if err != nil {
		return fmt.Errorf("memory server socket: %w", err)
	}
	if err := img.frozen.Serve(l, wire.Key(info.Key)); err != nil {
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

// parkSelf finishes the port read of caller, which is in its exit handler,
// with the value v (KVM_RUN with immediate_exit completes pending I/O and
// returns at once), and counts the caller as parked so that Pause can stop
// the others. Its state is then complete: RIP past the read, v in RAX.
func (m *VM) parkSelf(c *vcpu, v int32) error {
	_, _, _, _, data, ok := c.RunData().IO()
	if !ok || len(data) != 4 {
		return errors.New("fork call: not in a 4-byte port read")
	}
	data[0], data[1], data[2], data[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	c.RunData().SetImmediateExit(true)
	if err := c.Run(); !errors.Is(err, unix.EINTR) {
		return fmt.Errorf("fork call: complete port I/O: KVM_RUN returned %v, want EINTR", err)
	}
	m.mu.Lock()
	m.parked++
	m.cond.Broadcast()
	m.mu.Unlock()
	return nil
}

// unparkSelf undoes parkSelf once the others run again.
func (m *VM) unparkSelf(c *vcpu) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.parked--
	if !m.stopping() {
		c.RunData().SetImmediateExit(false)
	}
}

// launch starts the ticket's clones from img, each watched by a goroutine.
// The parent runs meanwhile: it never waits for its clones.
func (f *forker) launch(m *VM, img *forkImage, t *ticket) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := uint32(1); id <= t.slots; id++ {
		cr := &cloneRun{id: id, done: make(chan struct{})}
		t.clones = append(t.clones, cr)
		img.live++
		c, err := launchOffThread(f.cfg.Launcher, img.descriptor, t.id, id)
		if err != nil {
			m.logf("ticket %d: start clone %d: %v", t.id, id, err)
			f.ended(img, cr, err)
			continue
		}
		cr.c = c
		go func() {
			err := c.Wait()
			f.mu.Lock()
			defer f.mu.Unlock()
			f.ended(img, cr, err)
		}()
	}
}

// launchOffThread calls l.Launch on a goroutine of its own: the caller may
// be a vCPU goroutine, locked to a thread that the runtime ends with it,
// and a launcher's child may be tied to the thread that started it
// (PR_SET_PDEATHSIG).
func launchOffThread(l Launcher, descriptor string, ticket, id uint32) (Clone, error) {
	if l == nil {
		return nil, errors.New("no launcher configured")
	}
	type result struct {
		c   Clone
		err error
	}
	ch := make(chan result)
	go func() {
		c, err := l.Launch(descriptor, ticket, id)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// ended records that a clone ended; f.mu is held.
func (f *forker) ended(img *forkImage, cr *cloneRun, err error) {
	cr.err = err
	close(cr.done)
	img.live--
	if img.live == 0 && !img.held && img.frozen != nil {
		img.frozen.Close()
		if f.image == img {
			f.image = nil
		}
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

// join waits up to wait for the ticket's clones to end; once all have, it
// releases the ticket and returns how many did not end with sf_exit(0).
func (f *forker) join(id uint32, wait time.Duration) (int32, forkdev.Errno) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		t, ok := f.tickets[id]
		if !ok {
			f.mu.Unlock()
			return 0, forkdev.ENOTICKET
		}
		failed, running := 0, 0
		for _, cr := range t.clones {
			select {
			case <-cr.done:
				if cr.err != nil {
					failed++
				}
			default:
				running++
			}
		}
		if running == 0 && t.used {
			f.release(t)
			f.mu.Unlock()
			return int32(failed), 0
		}
		changed := f.changed
		f.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			return 0, forkdev.EAGAIN
		}
	}
}

// release gives a ticket's slots back; f.mu is held.
func (f *forker) release(t *ticket) {
	delete(f.tickets, t.id)
	f.inUse -= int(t.slots)
}

// killWait bounds how long sf_kill waits for killed clones to end.
const killWait = 10 * time.Second

// kill ends every clone of a ticket and releases it.
func (f *forker) kill(id uint32) forkdev.Errno {
	f.mu.Lock()
	t, ok := f.tickets[id]
	if !ok {
		f.mu.Unlock()
		return forkdev.ENOTICKET
	}
	clones := append([]*cloneRun(nil), t.clones...)
	f.release(t)
	f.mu.Unlock()
	killClones(clones)
	return 0
}

func killClones(clones []*cloneRun) {
	for _, cr := range clones {
		if cr.c != nil {
			cr.c.Kill()
		}
	}
	timeout := time.After(killWait)
	for _, cr := range clones {
		select {
		case <-cr.done:
		case <-timeout:
			return
		}
	}
}

// close kills every clone still running, ends the memory server and
// removes the fork directory if it made it.
func (f *forker) close() error {
	f.mu.Lock()
	f.closed = true
	var clones []*cloneRun
	for _, t := range f.tickets {
		clones = append(clones, t.clones...)
	}
	f.mu.Unlock()
	killClones(clones)
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	if f.srv != nil {
		errs = append(errs, f.srv.Close())
	}
	if f.madeDir {
		errs = append(errs, os.RemoveAll(f.dir))
	}
	return errors.Join(errs...)
}

// Fork forks the running machine from the host into n clones (fewer if
// the capacity has fewer free slots). The guest is paused only while its
// state is captured; it is not told.
func (m *VM) Fork(ctx context.Context, n int) (ForkResult, error) {
	if m.fork == nil {
		return ForkResult{}, fmt.Errorf("fork: %w", ErrForkDisabled)
	}
	if m.devs.fork.ID() != 0 {
		return ForkResult{}, errors.New("fork: a clone cannot fork")
	}
	if n < 1 || n > 1<<16 {
		return ForkResult{}, fmt.Errorf("fork: %d clones", n)
	}
	t, ferr := m.fork.requestTicket(uint32(n))
	if ferr != 0 {
		return ForkResult{}, fmt.Errorf("fork %d clones: %d of %d slots are free", n, m.fork.free(), m.fork.cfg.Capacity)
	}
	m.fork.takeTicket(t.id)
	img, err := m.freeze(ctx, nil, forkdev.CallClone, false)
	if err != nil {
		m.fork.mu.Lock()
		m.fork.release(t)
		m.fork.mu.Unlock()
		return ForkResult{}, fmt.Errorf("fork: %w", err)
	}
	m.logf("fork: ticket %d: fork of %d clones from the host, parent paused %v", t.id, t.slots, img.paused.Round(time.Microsecond))
	m.fork.launch(m, img, t)
	r := ForkResult{Ticket: t.id, Checkpoint: img.id, Descriptor: img.descriptor, Paused: img.paused}
	for id := uint32(1); id <= t.slots; id++ {
		r.Clones = append(r.Clones, id)
	}
	return r, nil
}

func (f *forker) free() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cfg.Capacity - f.inUse
}

// Join waits for the clones of a ticket from the host, as sf_join does.
// It returns how many did not end with sf_exit(0).
func (m *VM) Join(ctx context.Context, ticket uint32) (int, error) {
	if m.fork == nil {
		return 0, fmt.Errorf("join: %w", ErrForkDisabled)
	}
	for {
		n, err := m.fork.join(ticket, 100*time.Millisecond)
		switch err {
		case 0:
			return int(n), nil
		case forkdev.EAGAIN:
			if ctx.Err() != nil {
				return 0, fmt.Errorf("join ticket %d: %w", ticket, context.Cause(ctx))
			}
		default:
			return 0, fmt.Errorf("join ticket %d: %w", ticket, err)
		}
	}
}

// Kill ends the clones of a ticket from the host, as sf_kill does.
func (m *VM) Kill(ticket uint32) error {
	if m.fork == nil {
		return fmt.Errorf("kill: %w", ErrForkDisabled)
	}
	if err := m.fork.kill(ticket); err != 0 {
		return fmt.Errorf("kill ticket %d: %w", ticket, err)
	}
	return nil
}

// MemoryServerPID is the process ID of the memory server's helper, 0 if
// none has started. It does not wait for a fork in progress.
func (m *VM) MemoryServerPID() int {
	if m.fork == nil {
		return 0
	}
	return int(m.fork.srvPID.Load())
}
