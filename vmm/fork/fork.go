// Package fork is sfvmm's fork core: SnowFlock's fork API on top of the
// machine in package vmm. DESIGN.md's data flow, as this package runs it:
//
//   - The guest's fork device (vmm/devices/forkdev) decodes a call on a
//     vCPU's exit and hands it to Forker.Device's host (device.go):
//     sf_request_ticket, sf_clone, sf_checkpoint_parent, sf_create_clones,
//     sf_join, sf_kill. The control API's fork, join and kill come in
//     through Forker.Fork, Join and Kill.
//   - Slots and tickets are plain accounting (tickets.go).
//   - A fork freezes the parent (freeze.go): huge pages are split, the
//     memory server arms write protection while the guest runs, the
//     machine is held, its state saved and the image sealed, the hold is
//     released, and the fork descriptor is published for the clones.
//   - Clones are started behind a Launcher (launch.go): local processes
//     today; agents on other hosts plug in the same way.
//   - A clone is restored from the descriptor with its RAM empty, filled
//     on demand by memtap from the parent's memory server (clone.go).
//
// It consumes small interfaces (Machine, Server, Launcher) so that its
// logic is tested with fakes, without /dev/kvm; vm.go adapts *vmm.VM and
// memtap/server to them.
package fork

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
)

// Config configures a VM's fork core.
type Config struct {
	// Capacity is how many clone slots the VM's tickets may hold at once
	// (default DefaultCapacity).
	Capacity int
	// Launcher starts clones.
	Launcher Launcher
	// Dir holds the fork images (descriptor, the memory server's socket);
	// empty means a new temporary directory, removed at Close.
	Dir string
	// Log receives the fork core's messages; nil discards them.
	Log *slog.Logger
	// NewServer starts the parent's memory server; nil means memtap's
	// (package memtap/server).
	NewServer func() (Server, error)
	// ServeAddress, when set, is the TCP host:port (port 0 picks one) at
	// which the memory server serves clones on other hosts; otherwise it
	// serves on a Unix socket in Dir, for this host's clones.
	ServeAddress string
	// Multicast sends the pages clones on other hosts ask for to the
	// family's multicast group, for every clone to install (mcdist);
	// it needs ServeAddress, whose IP it sends from.
	Multicast bool
}

// DefaultCapacity is the clone slots a VM offers when Config says none.
const DefaultCapacity = 16

// Errors of fork operations.
var (
	// ErrBusy: a fork while the last one's image still serves live
	// clones, or while another fork is freezing (one image is frozen at
	// a time).
	ErrBusy = errors.New("a frozen image is still in use by live clones")
	// ErrClosed: the fork core has been closed with its machine.
	ErrClosed = errors.New("fork is closed")
	// ErrClone: a clone asked to fork from the host.
	ErrClone = errors.New("a clone cannot fork")
)

// Forker is one VM's fork state: tickets, the frozen image and its clones.
// Its methods are safe to call from any goroutine.
type Forker struct {
	cfg Config
	m   Machine // set by Device, before the machine runs
	// freeze serialises freezes; an image is made by one at a time.
	freezing sync.Mutex

	// mu guards everything below. It is never held while the machine is
	// being held: a vCPU blocked on it in an exit handler could not stop.
	mu        sync.Mutex
	dir       string
	madeDir   bool // dir is ours to remove
	srv       Server
	srvPID    atomic.Int32 // srv's process, for Status, which must not wait on mu
	image     *image
	lastImage uint32
	tickets   *tickets
	placer    Placer // nil unless the launcher places clones itself
	closed    bool
}

// New returns the fork core of one machine; connect it with Device.
func New(cfg Config) *Forker {
	if cfg.Capacity <= 0 {
		cfg.Capacity = DefaultCapacity
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.NewServer == nil {
		cfg.NewServer = newMemtapServer
	}
	f := &Forker{cfg: cfg, tickets: newTickets(cfg.Capacity)}
	if p, ok := cfg.Launcher.(Placer); ok {
		f.placer = p
		f.tickets.onRelease = func(id uint32) { go p.Release(id) }
	}
	return f
}

// Device connects the forker to its machine: it is vmm.Config.Fork (and
// RestoreConfig.Fork), called once when the machine is built.
func (f *Forker) Device(m *vmm.VM) forkdev.Host {
	f.m = vmMachine{m}
	return deviceHost{f}
}

// Result reports a fork.
type Result struct {
	Ticket     uint32
	Clones     []uint32 // clone IDs
	Checkpoint uint32
	Descriptor string        // the fork descriptor's path
	Paused     time.Duration // how long the parent was stopped
}

// Fork forks the running machine from the host into n clones (fewer if
// the capacity has fewer free slots). The guest is held only while its
// state is captured; it is not told.
func (f *Forker) Fork(ctx context.Context, n int) (Result, error) {
	if f.m.CloneID() != 0 {
		return Result{}, fmt.Errorf("fork: %w", ErrClone)
	}
	if n < 1 || n > 1<<16 {
		return Result{}, fmt.Errorf("fork: %d clones", n)
	}
	t, errno := f.requestTicket(uint32(n))
	if errno != 0 {
		f.mu.Lock()
		free := f.tickets.free()
		f.mu.Unlock()
		if f.placer != nil && free > 0 {
			return Result{}, fmt.Errorf("fork %d clones: no free slots in the cluster", n)
		}
		return Result{}, fmt.Errorf("fork %d clones: %d of %d slots are free", n, free, f.cfg.Capacity)
	}
	f.mu.Lock()
	f.tickets.take(t.id)
	f.mu.Unlock()
	img, err := f.freeze(ctx, -1, forkdev.CallClone, false)
	if err != nil {
		f.mu.Lock()
		f.tickets.release(t)
		f.mu.Unlock()
		return Result{}, fmt.Errorf("fork: %w", err)
	}
	f.infof("fork: ticket %d: fork of %d clones from the host, parent paused %v", t.id, t.slots, img.paused.Round(time.Microsecond))
	f.launch(img, t)
	r := Result{Ticket: t.id, Checkpoint: img.id, Descriptor: img.descriptor, Paused: img.paused}
	for id := uint32(1); id <= t.slots; id++ {
		r.Clones = append(r.Clones, id)
	}
	return r, nil
}

// requestTicket reserves up to n slots: from the VM's capacity and, when
// the launcher places clones on hosts of its own, from those hosts.
func (f *Forker) requestTicket(n uint32) (*ticket, forkdev.Errno) {
	f.mu.Lock()
	t, errno := f.tickets.request(n)
	f.mu.Unlock()
	if errno != 0 || f.placer == nil {
		return t, errno
	}
	// The cluster is asked without f.mu: it is a network round trip.
	m, err := f.placer.Reserve(t.id, int(t.slots))
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil || m <= 0 {
		if err != nil {
			f.cfg.Log.Error(fmt.Sprintf("ticket %d: reserve %d slots: %v", t.id, t.slots, err))
		}
		f.tickets.release(t)
		return nil, forkdev.ECAPACITY
	}
	f.tickets.shrink(t, uint32(m))
	return t, 0
}

// join waits up to wait for the ticket's clones to end; once all have, it
// releases the ticket and returns how many did not end with sf_exit(0).
func (f *Forker) join(id uint32, wait time.Duration) (int32, forkdev.Errno) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		failed, done, changed, errno := f.tickets.joinState(id)
		f.mu.Unlock()
		if errno != 0 || done {
			return failed, errno
		}
		select {
		case <-changed:
		case <-deadline.C:
			return 0, forkdev.EAGAIN
		}
	}
}

// Join waits for the clones of a ticket from the host, as sf_join does.
// It returns how many did not end with sf_exit(0).
func (f *Forker) Join(ctx context.Context, ticket uint32) (int, error) {
	for {
		n, errno := f.join(ticket, 100*time.Millisecond)
		switch errno {
		case 0:
			return int(n), nil
		case forkdev.EAGAIN:
			if ctx.Err() != nil {
				return 0, fmt.Errorf("join ticket %d: %w", ticket, context.Cause(ctx))
			}
		default:
			return 0, fmt.Errorf("join ticket %d: %w", ticket, errno)
		}
	}
}

// kill ends every clone of a ticket and releases it.
func (f *Forker) kill(id uint32) forkdev.Errno {
	f.mu.Lock()
	t, ok := f.tickets.byID[id]
	if !ok {
		f.mu.Unlock()
		return forkdev.ENOTICKET
	}
	clones := append([]*cloneRun(nil), t.clones...)
	f.tickets.release(t)
	f.mu.Unlock()
	killClones(clones)
	return 0
}

// Kill ends the clones of a ticket from the host, as sf_kill does.
func (f *Forker) Kill(ticket uint32) error {
	if errno := f.kill(ticket); errno != 0 {
		return fmt.Errorf("kill ticket %d: %w", ticket, errno)
	}
	return nil
}

// MemoryServerPID is the process ID of the memory server, 0 if none has
// started. It does not wait for a fork in progress.
func (f *Forker) MemoryServerPID() int { return int(f.srvPID.Load()) }

// Close kills every clone still running, ends the memory server and
// removes the fork directory if it made it. Call it once the machine has
// stopped.
func (f *Forker) Close() error {
	f.mu.Lock()
	f.closed = true
	clones := f.tickets.all()
	f.mu.Unlock()
	killClones(clones)
	// A freeze still under way finishes (or fails) before the server
	// goes.
	f.freezing.Lock()
	defer f.freezing.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	if f.image != nil {
		errs = append(errs, f.image.close())
		f.image = nil
	}
	if f.srv != nil {
		errs = append(errs, f.srv.Close())
		f.srv = nil
	}
	if f.madeDir {
		errs = append(errs, os.RemoveAll(f.dir))
	}
	return errors.Join(errs...)
}

func (f *Forker) infof(format string, a ...any) { f.cfg.Log.Info(fmt.Sprintf(format, a...)) }
