package forkdev

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/vmm/devices/devtest"
)

// fakeHost records the parent's calls and answers each with a fixed value.
type fakeHost struct{ calls []string }

func (h *fakeHost) RequestTicket(n uint32) (int32, Errno) {
	h.calls = append(h.calls, "ticket")
	return 7, 0
}
func (h *fakeHost) Clone(vcpu int, t uint32) (int32, Errno) {
	h.calls = append(h.calls, "clone")
	return 0, 0
}
func (h *fakeHost) CheckpointParent(vcpu int) (int32, Errno) {
	h.calls = append(h.calls, "checkpoint")
	return 3, 0
}
func (h *fakeHost) CreateClones(c, t uint32) Errno {
	h.calls = append(h.calls, "create")
	return 0
}
func (h *fakeHost) Join(t uint32, wait time.Duration) (int32, Errno) {
	h.calls = append(h.calls, "join")
	return 0, EAGAIN
}
func (h *fakeHost) Kill(t uint32) Errno {
	h.calls = append(h.calls, "kill")
	return ENOTICKET
}
func (h *fakeHost) TicketSlots(t uint32) (int32, Errno) {
	h.calls = append(h.calls, "slots")
	return 2, 0
}

func TestCallsByRole(t *testing.T) {
	tests := []struct {
		name          string
		nr            uint32
		parent, clone int32 // results
	}{
		{"probe", CallProbe, Magic, Magic},
		{"id", CallID, 0, 5},
		{"request ticket", CallRequestTicket, 7, int32(ENOTPARENT)},
		{"clone", CallClone, 0, int32(ENOTPARENT)},
		{"checkpoint", CallCheckpointParent, 3, int32(ENOTPARENT)},
		{"create clones", CallCreateClones, 0, int32(ENOTPARENT)},
		{"exit", CallExit, int32(ENOTCHILD), 0},
		{"join", CallJoin, int32(EAGAIN), int32(ENOTPARENT)},
		{"kill", CallKill, int32(ENOTICKET), int32(ENOTPARENT)},
		{"ticket slots", CallTicketSlots, 2, int32(ENOTPARENT)},
		{"unknown", 10, int32(EINVAL), int32(EINVAL)},
		{"huge", 0xffffffff, int32(EINVAL), int32(EINVAL)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var exited []uint32
			exit := func(s uint32) { exited = append(exited, s) }
			parent := New(&fakeHost{}, exit)
			if got := parent.Call(0, Regs{EAX: tc.nr, EBX: 1}); got != tc.parent {
				t.Errorf("parent: %d, want %d", got, tc.parent)
			}
			if len(exited) != 0 {
				t.Errorf("the parent's call ended the VM")
			}
			host := &fakeHost{}
			clone := New(host, exit)
			clone.Restore(State{ID: 5})
			if got := clone.Call(1, Regs{EAX: tc.nr, EBX: 1}); got != tc.clone {
				t.Errorf("clone: %d, want %d", got, tc.clone)
			}
			if len(host.calls) != 0 {
				t.Errorf("a clone's call reached the host: %v", host.calls)
			}
			if want := tc.nr == CallExit; want != (len(exited) == 1) {
				t.Errorf("exit calls %v", exited)
			}
		})
	}
}

func TestRequestTicketArguments(t *testing.T) {
	d := New(&fakeHost{}, nil)
	for _, n := range []uint32{0, 1<<16 + 1, 0xffffffff} {
		if got := d.Call(0, Regs{EAX: CallRequestTicket, EBX: n}); got != int32(EINVAL) {
			t.Errorf("sf_request_ticket(%d) = %d, want SF_EINVAL", n, got)
		}
	}
}

func TestNoHost(t *testing.T) {
	d := New(nil, nil)
	if got := d.Call(0, Regs{EAX: CallRequestTicket, EBX: 1}); got != int32(ENOFORK) {
		t.Errorf("without fork: %d, want SF_ENOFORK", got)
	}
	if got := d.Call(0, Regs{EAX: CallProbe}); got != Magic {
		t.Errorf("probe without fork: %#x", got)
	}
}

func TestPortIO(t *testing.T) {
	d := New(&fakeHost{}, nil)
	regs := func() (Regs, error) { return Regs{EAX: CallProbe}, nil }
	data := make([]byte, 4)
	if err := d.PortIO(0, true, data, regs); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint32(data); got != Magic {
		t.Errorf("inl: %#x, want the magic", got)
	}
	for _, n := range []int{1, 2, 8} {
		b := make([]byte, n)
		called := false
		d.PortIO(0, true, b, func() (Regs, error) { called = true; return Regs{}, nil })
		for _, v := range b {
			if v != 0xff {
				t.Errorf("%d-byte read: %x, want all ones", n, b)
				break
			}
		}
		if called {
			t.Errorf("%d-byte read made a call", n)
		}
	}
	if err := d.PortIO(0, true, data, func() (Regs, error) { return Regs{}, errors.New("boom") }); err == nil {
		t.Error("a failed register read was not reported")
	}
	if err := d.PortIO(0, false, data, regs); err != nil {
		t.Errorf("a write: %v", err)
	}
}

func TestErrnoNames(t *testing.T) {
	for e := EINVAL; e >= errnoLowest; e-- {
		if _, ok := errnoNames[e]; !ok {
			t.Errorf("error %d has no name", int32(e))
		}
	}
}

// FuzzCall: whatever the registers hold, a call returns without panicking,
// a clone never reaches the host, and the parent never exits.
func FuzzCall(f *testing.F) {
	for nr := uint32(0); nr <= CallID+1; nr++ {
		f.Add(nr, uint32(1), uint32(0), uint32(0))
		f.Add(nr, uint32(0), uint32(0xffffffff), uint32(3))
	}
	f.Fuzz(func(t *testing.T, eax, ebx, ecx, id uint32) {
		host := &fakeHost{}
		exits := 0
		d := New(host, func(uint32) { exits++ })
		d.Restore(State{ID: id})
		r := d.Call(int(ecx%4), Regs{EAX: eax, EBX: ebx, ECX: ecx})
		if id != 0 && len(host.calls) != 0 {
			t.Fatalf("clone %d reached the host: %v", id, host.calls)
		}
		if id == 0 && exits != 0 {
			t.Fatal("the parent exited")
		}
		if r < 0 && Errno(r) < errnoLowest {
			t.Fatalf("result %d is no error code", r)
		}
	})
}

func TestSaveRestore(t *testing.T) {
	d := New(nil, nil)
	d.Restore(State{ID: 9})
	fresh := New(nil, nil)
	if s := devtest.RoundTrip(t, d, fresh); s.ID != 9 {
		t.Errorf("state %+v, want clone ID 9", s)
	}
	if fresh.ID() != 9 {
		t.Errorf("restored clone ID %d, want 9", fresh.ID())
	}
}
