package fork

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/memtap/server"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
	"github.com/sfvmm/sfvmm/vmm/snapshot"
)

// events records the steps of a fork, in order, across the fakes.
type events struct {
	mu   sync.Mutex
	list []string
	fail string // the step that fails
}

func (e *events) step(name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, name)
	if name == e.fail {
		return fmt.Errorf("%s failed", name)
	}
	return nil
}

func (e *events) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.list, " ")
}

// fakeMachine is a one-region machine that records what the fork asks.
type fakeMachine struct {
	ev      *events
	ram     []byte
	holds   int // in force
	failed  map[int]forkdev.Errno
	cloneID uint32
}

func newFakeMachine(ev *events) *fakeMachine {
	return &fakeMachine{ev: ev, ram: make([]byte, 1<<20), failed: map[int]forkdev.Errno{}}
}

func (m *fakeMachine) Hold(_ context.Context, caller int, result int32) (func(), error) {
	if err := m.ev.step("hold"); err != nil {
		return nil, err
	}
	m.holds++
	var once sync.Once
	return func() {
		once.Do(func() {
			m.ev.step("release")
			m.holds--
		})
	}, nil
}

func (m *fakeMachine) SaveState() (*vmm.MachineState, error) {
	if m.holds == 0 {
		return nil, errors.New("save without a hold")
	}
	if err := m.ev.step("save"); err != nil {
		return nil, err
	}
	return &vmm.MachineState{Config: vmm.MachineConfig{CPUs: 1, MemBytes: uint64(len(m.ram))}}, nil
}

func (m *fakeMachine) KeepPages() { m.ev.step("keep") }

func (m *fakeMachine) MapDisks() ([][][]byte, func(), error) { return nil, func() {}, nil }
func (m *fakeMachine) CompactDisks() error                   { return nil }

func (m *fakeMachine) RAM() ([]RAM, error) {
	return []RAM{{GPA: 0, Host: m.ram, Populated: snapshot.FromResidency(make([]byte, len(m.ram)/4096))}}, nil
}

func (m *fakeMachine) FailCall(vcpu int, errno forkdev.Errno) { m.failed[vcpu] = errno }
func (m *fakeMachine) CloneID() uint32                        { return m.cloneID }
func (m *fakeMachine) Config() vmm.Config {
	return vmm.Config{CPUs: 1, MemBytes: uint64(len(m.ram))}
}

// fakeServer hands out fakeImages.
type fakeServer struct {
	ev     *events
	images []*fakeImage
	dead   chan struct{}
	closed bool
}

func (s *fakeServer) Arm([]server.Region) (Image, error) {
	if err := s.ev.step("arm"); err != nil {
		return nil, err
	}
	im := &fakeImage{ev: s.ev}
	s.images = append(s.images, im)
	return im, nil
}
func (s *fakeServer) Done() <-chan struct{} { return s.dead }
func (s *fakeServer) PID() int              { return 4242 }
func (s *fakeServer) Close() error          { s.closed = true; return nil }

type fakeImage struct {
	ev     *events
	closed bool
}

func (im *fakeImage) Seal([]server.Region) error { return im.ev.step("seal") }
func (im *fakeImage) Serve(l net.Listener, _ wire.Key) error {
	l.Close()
	return im.ev.step("serve")
}
func (im *fakeImage) Multicast(net.IP, *net.UDPAddr, wire.Key) error { return im.ev.step("multicast") }
func (im *fakeImage) Close() error                                   { im.closed = true; return nil }

// fakeClone ends when told to, with the error it is given.
type fakeClone struct {
	end    chan error
	killed bool
	mu     sync.Mutex
}

func (c *fakeClone) Wait() error { return <-c.end }

func (c *fakeClone) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.killed {
		c.killed = true
		c.end <- errors.New("killed")
	}
	return nil
}

// fakeLauncher starts fake clones, failing the ids in fail.
type fakeLauncher struct {
	mu          sync.Mutex
	clones      map[uint32]*fakeClone
	fail        map[uint32]bool
	descriptors []string
}

func (l *fakeLauncher) Launch(descriptor string, ticket, id uint32) (Clone, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.descriptors = append(l.descriptors, descriptor)
	if l.fail[id] {
		return nil, errors.New("cannot start")
	}
	c := &fakeClone{end: make(chan error, 1)}
	l.clones[id] = c
	return c, nil
}

type fixture struct {
	f  *Forker
	l  *fakeLauncher
	m  *fakeMachine
	s  *fakeServer
	ev *events
}

func newFixture(t *testing.T, capacity int, fail ...uint32) *fixture {
	ev := &events{}
	x := &fixture{ev: ev, m: newFakeMachine(ev), s: &fakeServer{ev: ev, dead: make(chan struct{})},
		l: &fakeLauncher{clones: map[uint32]*fakeClone{}, fail: map[uint32]bool{}}}
	for _, id := range fail {
		x.l.fail[id] = true
	}
	x.f = New(Config{Capacity: capacity, Launcher: x.l, Dir: t.TempDir(),
		NewServer: func() (Server, error) { return x.s, nil }})
	x.f.m = x.m
	t.Cleanup(func() { x.f.Close() })
	return x
}

func (x *fixture) requestTicket(t *testing.T, n uint32) *ticket {
	t.Helper()
	x.f.mu.Lock()
	defer x.f.mu.Unlock()
	tk, errno := x.f.tickets.request(n)
	if errno != 0 {
		t.Fatalf("request %d: %v", n, errno)
	}
	if _, errno := x.f.tickets.take(tk.id); errno != 0 {
		t.Fatal(errno)
	}
	return tk
}

// The freeze runs its steps in the order its comment gives, and the
// descriptor it publishes reads back with the fork's details.
func TestFreezeOrder(t *testing.T) {
	x := newFixture(t, 4)
	r, err := x.f.Fork(context.Background(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := x.ev.String(), "keep arm hold save seal release serve"; got != want {
		t.Errorf("steps %q, want %q", got, want)
	}
	d, h, err := ReadDescriptor(r.Descriptor)
	if err != nil {
		t.Fatal(err)
	}
	if d.Fork.Checkpoint != r.Checkpoint || d.Fork.Caller != -1 || d.Fork.Call != forkdev.CallClone || d.Fork.ParentPID != os.Getpid() {
		t.Errorf("descriptor fork info %+v", d.Fork)
	}
	if len(h.Memory) != 1 || h.Memory[0].Size != 1<<20 {
		t.Errorf("descriptor memory %+v", h.Memory)
	}
	if len(x.l.descriptors) != 2 || x.l.descriptors[0] != r.Descriptor {
		t.Errorf("launched %v, want 2 clones of %s", x.l.descriptors, r.Descriptor)
	}
	if x.m.holds != 0 {
		t.Errorf("%d holds left", x.m.holds)
	}
}

// Whatever step fails, the fork returns its error, the image is closed,
// the hold released and the ticket's slots given back; the next fork
// works.
func TestFreezeErrorsReleaseEverything(t *testing.T) {
	for _, step := range []string{"arm", "hold", "save", "seal", "serve"} {
		t.Run(step, func(t *testing.T) {
			x := newFixture(t, 4)
			x.ev.fail = step
			if _, err := x.f.Fork(context.Background(), 4); err == nil || !strings.Contains(err.Error(), step+" failed") {
				t.Fatalf("fork failing at %s: %v", step, err)
			}
			for i, im := range x.s.images {
				if !im.closed {
					t.Errorf("image %d left open", i)
				}
			}
			if x.m.holds != 0 {
				t.Errorf("%d holds left", x.m.holds)
			}
			steps := strings.Fields(x.ev.String())
			if slices.Contains(steps, "hold") && step != "hold" && !slices.Contains(steps, "release") {
				t.Errorf("held and never released: %v", steps)
			}
			if free := x.f.tickets.free(); free != 4 {
				t.Errorf("%d of 4 slots free after the failure", free)
			}
			if len(x.l.descriptors) != 0 {
				t.Errorf("clones launched from a failed fork: %v", x.l.descriptors)
			}
			x.ev.fail = ""
			if _, err := x.f.Fork(context.Background(), 4); err != nil {
				t.Errorf("fork after the failure: %v", err)
			}
		})
	}
}

// A guest's sf_clone that fails answers SF_EFORK in the caller's
// registers and leaves its ticket usable again.
func TestCloneCallFailure(t *testing.T) {
	x := newFixture(t, 4)
	host := deviceHost{x.f}
	id, errno := host.RequestTicket(2)
	if errno != 0 {
		t.Fatal(errno)
	}
	x.ev.fail = "seal"
	if _, errno := host.Clone(1, uint32(id)); errno != forkdev.EFORK {
		t.Fatalf("failed sf_clone: %v, want SF_EFORK", errno)
	}
	if x.m.failed[1] != forkdev.EFORK {
		t.Errorf("caller's result %v, want SF_EFORK", x.m.failed[1])
	}
	x.ev.fail = ""
	if _, errno := host.Clone(1, uint32(id)); errno != 0 {
		t.Errorf("sf_clone again: %v", errno)
	}
}

// While a fork's clones live, another fork is refused as busy; a
// checkpoint keeps its image for sf_create_clones.
func TestBusyAndCheckpoint(t *testing.T) {
	x := newFixture(t, 8)
	host := deviceHost{x.f}
	r, err := x.f.Fork(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x.f.Fork(context.Background(), 1); !errors.Is(err, ErrBusy) {
		t.Errorf("fork with live clones: %v, want ErrBusy", err)
	}
	if _, errno := host.CheckpointParent(0); errno != forkdev.EBUSY {
		t.Errorf("checkpoint with live clones: %v, want SF_EBUSY", errno)
	}
	x.l.clones[1].end <- nil
	if n, err := x.f.Join(context.Background(), r.Ticket); err != nil || n != 0 {
		t.Fatalf("join: %d %v", n, err)
	}
	if !x.s.images[0].closed {
		t.Error("the fork's image outlived its clones")
	}
	c, errno := host.CheckpointParent(0)
	if errno != 0 {
		t.Fatal(errno)
	}
	tk, _ := host.RequestTicket(2)
	if errno := host.CreateClones(uint32(c), uint32(tk)); errno != 0 {
		t.Fatal(errno)
	}
	if errno := host.CreateClones(uint32(c)+1, uint32(tk)); errno != forkdev.ENOCHECKPT {
		t.Errorf("unknown checkpoint: %v, want SF_ENOCHECKPT", errno)
	}
	for _, c := range x.l.clones {
		c.Kill()
	}
	if _, errno := host.Join(uint32(tk), 5*time.Second); errno != 0 {
		t.Fatal(errno)
	}
	if x.s.images[1].closed {
		t.Error("a checkpoint's image was closed when its clones ended")
	}
}

func TestTicketsWithinCapacity(t *testing.T) {
	ts := newTickets(4)
	if _, err := ts.request(5); err != forkdev.ECAPACITY {
		t.Errorf("5 of 4 slots: %v, want SF_ECAPACITY", err)
	}
	a, err := ts.request(3)
	if err != 0 || a.slots != 3 {
		t.Fatalf("3 of 4 slots: %+v %v", a, err)
	}
	b, err := ts.request(4)
	if err != 0 || b.slots != 1 {
		t.Fatalf("4 with 1 free: %+v %v, want a ticket for 1", b, err)
	}
	if _, err := ts.request(1); err != forkdev.ECAPACITY {
		t.Errorf("with none free: %v, want SF_ECAPACITY", err)
	}
	if _, err := ts.take(a.id); err != 0 {
		t.Fatal(err)
	}
	if _, err := ts.take(a.id); err != forkdev.ETICKETUSED {
		t.Errorf("second use: %v, want SF_ETICKETUSED", err)
	}
	if _, err := ts.take(99); err != forkdev.ENOTICKET {
		t.Errorf("unknown ticket: %v, want SF_ENOTICKET", err)
	}
	ts.release(b)
	if c, err := ts.request(1); err != 0 || c.slots != 1 {
		t.Errorf("after a release freed a slot: %+v %v", c, err)
	}
}

func TestJoinCountsFailures(t *testing.T) {
	x := newFixture(t, 8, 3)
	tk := x.requestTicket(t, 3)
	img := &image{id: 1}
	x.f.launch(img, tk)
	if _, err := x.f.join(tk.id, 10*time.Millisecond); err != forkdev.EAGAIN {
		t.Fatalf("join with clones running: %v, want SF_EAGAIN", err)
	}
	x.l.clones[1].end <- nil
	x.l.clones[2].end <- errors.New("exited with status 1")
	n, err := x.f.join(tk.id, 5*time.Second)
	if err != 0 || n != 2 {
		t.Errorf("join: %d, %v; want 2 failed (one exited 1, one never started)", n, err)
	}
	if _, err := x.f.join(tk.id, 0); err != forkdev.ENOTICKET {
		t.Errorf("second join: %v, want SF_ENOTICKET", err)
	}
	if img.live != 0 {
		t.Errorf("image has %d live clones after all ended", img.live)
	}
	if x.f.tickets.inUse != 0 {
		t.Errorf("%d slots still in use", x.f.tickets.inUse)
	}
}

func TestKillEndsClones(t *testing.T) {
	x := newFixture(t, 8)
	tk := x.requestTicket(t, 2)
	x.f.launch(&image{id: 1}, tk)
	if err := x.f.kill(tk.id); err != 0 {
		t.Fatal(err)
	}
	for id, c := range x.l.clones {
		if !c.killed {
			t.Errorf("clone %d not killed", id)
		}
	}
	if err := x.f.kill(tk.id); err != forkdev.ENOTICKET {
		t.Errorf("second kill: %v, want SF_ENOTICKET", err)
	}
}

func TestCloseKillsLiveClones(t *testing.T) {
	x := newFixture(t, 8)
	tk := x.requestTicket(t, 2)
	x.f.launch(&image{id: 1}, tk)
	if err := x.f.Close(); err != nil {
		t.Fatal(err)
	}
	for id, c := range x.l.clones {
		if !c.killed {
			t.Errorf("clone %d outlived its parent", id)
		}
	}
	if _, err := x.f.Fork(context.Background(), 1); !errors.Is(err, ErrClosed) {
		t.Errorf("fork after close: %v, want ErrClosed", err)
	}
}

// fakePlacer is a launcher that places clones itself, with free slots of
// its own.
type fakePlacer struct {
	fakeLauncher
	free     int
	reserved map[uint32]int
	released chan uint32
	err      error
}

func (p *fakePlacer) Reserve(ticket uint32, n int) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return 0, p.err
	}
	m := min(n, p.free)
	p.free -= m
	p.reserved[ticket] = m
	return m, nil
}

func (p *fakePlacer) Release(ticket uint32) {
	p.mu.Lock()
	p.free += p.reserved[ticket]
	delete(p.reserved, ticket)
	p.mu.Unlock()
	p.released <- ticket
}

// With a launcher that places clones (agents of a cluster), a ticket gets
// the fewer of the VM's free slots and the cluster's, the cluster's
// failure is SF_ECAPACITY, and the ticket's end gives its slots back.
func TestPlacerSlots(t *testing.T) {
	p := &fakePlacer{fakeLauncher: fakeLauncher{clones: map[uint32]*fakeClone{}, fail: map[uint32]bool{}},
		free: 3, reserved: map[uint32]int{}, released: make(chan uint32, 4)}
	f := New(Config{Capacity: 8, Launcher: p, Dir: t.TempDir()})
	defer f.Close()
	tk, errno := f.requestTicket(5)
	if errno != 0 || tk.slots != 3 {
		t.Fatalf("5 slots with 3 free in the cluster: %+v, %v; want a ticket of 3", tk, errno)
	}
	f.mu.Lock()
	if free := f.tickets.free(); free != 5 {
		t.Errorf("the VM has %d slots free, want 8-3", free)
	}
	f.mu.Unlock()
	if _, errno := f.requestTicket(1); errno != forkdev.ECAPACITY {
		t.Errorf("a full cluster: %v, want SF_ECAPACITY", errno)
	}
	f.mu.Lock()
	f.tickets.release(tk)
	f.mu.Unlock()
	// (The refused ticket is released too, with nothing reserved.)
	for id := uint32(0); id != tk.id; {
		select {
		case id = <-p.released:
		case <-time.After(5 * time.Second):
			t.Fatal("the placer was not told the ticket ended")
		}
	}
	p.mu.Lock()
	p.err = errors.New("etcd unreachable")
	p.mu.Unlock()
	if _, errno := f.requestTicket(1); errno != forkdev.ECAPACITY {
		t.Errorf("a cluster that cannot be asked: %v, want SF_ECAPACITY", errno)
	}
	f.mu.Lock()
	if free := f.tickets.free(); free != 8 {
		t.Errorf("after a failed reservation the VM has %d slots free, want 8", free)
	}
	f.mu.Unlock()
}
