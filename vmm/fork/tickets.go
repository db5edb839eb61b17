package fork

import (
	"time"

	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
)

// tickets is SnowFlock's slot accounting: a ticket reserves clone slots
// (sf_request_ticket), a fork uses it once (sf_clone, sf_create_clones),
// and sf_join or sf_kill gives its slots back. It is plain logic; the
// caller holds the Forker's mutex around every method.
type tickets struct {
	capacity int
	inUse    int // slots the tickets hold
	last     uint32
	byID     map[uint32]*ticket
	changed  chan struct{} // closed and replaced when a clone ends
	// onRelease, if set, is told of each ticket released.
	onRelease func(id uint32)
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

func newTickets(capacity int) *tickets {
	return &tickets{capacity: capacity, byID: map[uint32]*ticket{}, changed: make(chan struct{})}
}

// request reserves up to n slots (m ≤ n of those free).
func (ts *tickets) request(n uint32) (*ticket, forkdev.Errno) {
	if int64(n) > int64(ts.capacity) {
		return nil, forkdev.ECAPACITY
	}
	m := min(int(n), ts.capacity-ts.inUse)
	if m <= 0 {
		return nil, forkdev.ECAPACITY
	}
	ts.last++
	t := &ticket{id: ts.last, slots: uint32(m)}
	ts.byID[t.id] = t
	ts.inUse += m
	return t, 0
}

// take marks a ticket as used by the fork about to happen.
func (ts *tickets) take(id uint32) (*ticket, forkdev.Errno) {
	t, ok := ts.byID[id]
	switch {
	case !ok:
		return nil, forkdev.ENOTICKET
	case t.used:
		return nil, forkdev.ETICKETUSED
	}
	t.used = true
	return t, 0
}

// slots is what sf_ticket_slots answers.
func (ts *tickets) slots(id uint32) (int32, forkdev.Errno) {
	t, ok := ts.byID[id]
	if !ok {
		return 0, forkdev.ENOTICKET
	}
	return int32(t.slots), 0
}

// release gives a ticket's slots back.
func (ts *tickets) release(t *ticket) {
	if ts.byID[t.id] == t {
		delete(ts.byID, t.id)
		ts.inUse -= int(t.slots)
		if ts.onRelease != nil {
			ts.onRelease(t.id)
		}
	}
}

// shrink leaves ticket t m of its slots (m ≤ its slots), before it is used.
func (ts *tickets) shrink(t *ticket, m uint32) {
	if m < t.slots {
		ts.inUse -= int(t.slots - m)
		t.slots = m
	}
}

func (ts *tickets) free() int { return ts.capacity - ts.inUse }

// ended records how a clone ended and wakes joiners.
func (ts *tickets) ended(cr *cloneRun, err error) {
	cr.err = err
	close(cr.done)
	close(ts.changed)
	ts.changed = make(chan struct{})
}

// joinState says whether a ticket's clones have all ended and how many
// did not end with sf_exit(0); when they have, the ticket is released.
// changed is closed when another clone ends.
func (ts *tickets) joinState(id uint32) (failed int32, done bool, changed <-chan struct{}, errno forkdev.Errno) {
	t, ok := ts.byID[id]
	if !ok {
		return 0, false, nil, forkdev.ENOTICKET
	}
	running := 0
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
		ts.release(t)
		return failed, true, nil, 0
	}
	return 0, false, ts.changed, 0
}

// all returns every clone of every ticket.
func (ts *tickets) all() []*cloneRun {
	var out []*cloneRun
	for _, t := range ts.byID {
		out = append(out, t.clones...)
	}
	return out
}

// killWait bounds how long sf_kill waits for killed clones to end.
const killWait = 10 * time.Second

// killClones kills clones and waits, up to killWait, for them to end.
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
