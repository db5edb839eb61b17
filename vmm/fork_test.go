package vmm

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
)

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
	mu     sync.Mutex
	clones map[uint32]*fakeClone
	fail   map[uint32]bool
}

func (l *fakeLauncher) Launch(descriptor string, ticket, id uint32) (Clone, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail[id] {
		return nil, errors.New("cannot start")
	}
	c := &fakeClone{end: make(chan error, 1)}
	l.clones[id] = c
	return c, nil
}

func newTestForker(capacity int, fail ...uint32) (*forker, *fakeLauncher, *VM) {
	l := &fakeLauncher{clones: map[uint32]*fakeClone{}, fail: map[uint32]bool{}}
	for _, id := range fail {
		l.fail[id] = true
	}
	return newForker(ForkConfig{Capacity: capacity, Launcher: l}), l, newVM(Config{})
}

func TestTicketsWithinCapacity(t *testing.T) {
	f, _, _ := newTestForker(4)
	if _, err := f.requestTicket(5); err != forkdev.ECAPACITY {
		t.Errorf("5 of 4 slots: %v, want SF_ECAPACITY", err)
	}
	a, err := f.requestTicket(3)
	if err != 0 || a.slots != 3 {
		t.Fatalf("3 of 4 slots: %+v %v", a, err)
	}
	b, err := f.requestTicket(4)
	if err != 0 || b.slots != 1 {
		t.Fatalf("4 with 1 free: %+v %v, want a ticket for 1", b, err)
	}
	if _, err := f.requestTicket(1); err != forkdev.ECAPACITY {
		t.Errorf("with none free: %v, want SF_ECAPACITY", err)
	}
	if _, err := f.takeTicket(a.id); err != 0 {
		t.Fatal(err)
	}
	if _, err := f.takeTicket(a.id); err != forkdev.ETICKETUSED {
		t.Errorf("second use: %v, want SF_ETICKETUSED", err)
	}
	if _, err := f.takeTicket(99); err != forkdev.ENOTICKET {
		t.Errorf("unknown ticket: %v, want SF_ENOTICKET", err)
	}
	if err := f.kill(b.id); err != 0 {
		t.Fatal(err)
	}
	if c, err := f.requestTicket(1); err != 0 || c.slots != 1 {
		t.Errorf("after kill freed a slot: %+v %v", c, err)
	}
}

func TestJoinCountsFailures(t *testing.T) {
	f, l, m := newTestForker(8, 3)
	tk, _ := f.requestTicket(3)
	f.takeTicket(tk.id)
	img := &forkImage{id: 1}
	f.launch(m, img, tk)
	if _, err := f.join(tk.id, 10*time.Millisecond); err != forkdev.EAGAIN {
		t.Fatalf("join with clones running: %v, want SF_EAGAIN", err)
	}
	l.clones[1].end <- nil
	l.clones[2].end <- errors.New("exited with status 1")
	n, err := f.join(tk.id, 5*time.Second)
	if err != 0 || n != 2 {
		t.Errorf("join: %d, %v; want 2 failed (one exited 1, one never started)", n, err)
	}
	if _, err := f.join(tk.id, 0); err != forkdev.ENOTICKET {
		t.Errorf("second join: %v, want SF_ENOTICKET", err)
	}
	if img.live != 0 {
		t.Errorf("image has %d live clones after all ended", img.live)
	}
	if f.inUse != 0 {
		t.Errorf("%d slots still in use", f.inUse)
	}
}

func TestKillEndsClones(t *testing.T) {
	f, l, m := newTestForker(8)
	tk, _ := f.requestTicket(2)
	f.takeTicket(tk.id)
	f.launch(m, &forkImage{id: 1}, tk)
	if err := f.kill(tk.id); err != 0 {
		t.Fatal(err)
	}
	for id, c := range l.clones {
		if !c.killed {
			t.Errorf("clone %d not killed", id)
		}
	}
	if err := f.kill(tk.id); err != forkdev.ENOTICKET {
		t.Errorf("second kill: %v, want SF_ENOTICKET", err)
	}
}

func TestCloseKillsLiveClones(t *testing.T) {
	f, l, m := newTestForker(8)
	tk, _ := f.requestTicket(2)
	f.takeTicket(tk.id)
	f.launch(m, &forkImage{id: 1}, tk)
	if err := f.close(); err != nil {
		t.Fatal(err)
	}
	for id, c := range l.clones {
		if !c.killed {
			t.Errorf("clone %d outlived its parent", id)
		}
	}
}
