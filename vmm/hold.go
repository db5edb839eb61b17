package vmm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A Hold keeps every vCPU out of the guest until it is released. A user's
// pause, a snapshot and a fork each take one, and they nest: the vCPUs run
// again only when the last hold is released, so no operation can resume a
// guest that another still needs stopped (a snapshot that ends during a
// fork, say, cannot let the guest run between the fork's state capture and
// the sealing of its memory image).
type Hold struct {
	m    *VM
	why  string
	self *vcpu // the vCPU that took the hold from its exit handler, if any
	once sync.Once
}

// HoldTimeout bounds how long taking a hold waits for the vCPUs to stop
// when the caller's context sets no earlier deadline. A vCPU that does not
// leave the guest in that time is stuck (on a page that never arrives, in
// the host kernel): the hold then fails rather than waiting for good.
const HoldTimeout = 10 * time.Second

// ErrNotHeld is returned by operations that need the vCPUs stopped when no
// hold is in force.
var ErrNotHeld = errors.New("the machine is not held (its vCPUs may be running)")

// Hold stops every vCPU outside KVM_RUN, with any pending port I/O or MMIO
// completed, so that their state can be read, and keeps them stopped until
// the hold is released. why names the holder in errors. A machine that has
// not started running is held at once.
func (m *VM) Hold(ctx context.Context, why string) (*Hold, error) {
	h := &Hold{m: m, why: why}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopping() {
		return nil, ErrStopped
	}
	m.take()
	if err := m.waitParked(ctx, why); err != nil {
		m.drop()
		return nil, err
	}
	return h, nil
}

// HoldCall takes a hold from the exit handler of the vCPU vcpu, which is in
// a 4-byte port read: the read completes with v (KVM_RUN with
// immediate_exit completes pending I/O and returns at once), leaving the
// vCPU's state whole (RIP past the read, v in RAX), and the vCPU counts as
// stopped while the hold lasts. It must be called on that vCPU's goroutine.
func (m *VM) HoldCall(ctx context.Context, vcpu int, v int32) (*Hold, error) {
	if vcpu < 0 || vcpu >= len(m.vcpus) {
		return nil, fmt.Errorf("hold: no vCPU %d", vcpu)
	}
	c := m.vcpus[vcpu]
	_, _, _, _, data, ok := c.RunData().IO()
	if !ok || len(data) != 4 {
		return nil, errors.New("hold: vCPU is not in a 4-byte port read")
	}
	data[0], data[1], data[2], data[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	c.RunData().SetImmediateExit(true)
	if err := c.Run(false); !errors.Is(err, unix.EINTR) {
		return nil, fmt.Errorf("hold: complete port I/O: KVM_RUN returned %v, want EINTR", err)
	}
	h := &Hold{m: m, why: "fork call", self: c}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.parked++
	m.cond.Broadcast() // a hold already waiting may now be complete
	m.take()
	if err := m.waitParked(ctx, h.why); err != nil {
		m.drop()
		m.unparkSelf(c)
		return nil, err
	}
	return h, nil
}

// Release ends the hold; the vCPUs run again if it was the last. Later
// calls do nothing.
func (h *Hold) Release() {
	h.once.Do(func() {
		m := h.m
		m.mu.Lock()
		defer m.mu.Unlock()
		m.drop()
		if h.self != nil {
			m.unparkSelf(h.self)
		}
	})
}

// take adds a hold and kicks the vCPUs out of the guest; m.mu is held.
func (m *VM) take() {
	m.holds++
	if m.holds == 1 {
		for _, c := range m.vcpus {
			c.kick()
		}
		// Device work outside the vCPUs' exits stops too: what a
		// hold saves must not move. It never waits on m.mu.
		if m.devs != nil {
			m.devs.Quiesce()
		}
	}
}

// drop removes a hold and lets the vCPUs go if it was the last; m.mu is
// held.
func (m *VM) drop() {
	m.holds--
	if m.holds == 0 {
		if m.devs != nil {
			m.devs.Resume()
		}
		m.cond.Broadcast()
	}
}

// unparkSelf undoes HoldCall's counting of the caller as parked; m.mu is
// held. The caller's next KVM_RUN enters the guest only if no other hold
// is in force and the machine is not stopping; otherwise it returns at
// once and the vCPU parks like the others.
func (m *VM) unparkSelf(c *vcpu) {
	m.parked--
	if m.holds == 0 && !m.stopping() {
		c.RunData().SetImmediateExit(false)
	}
}

// waitParked waits until every running vCPU has parked, until ctx ends or
// HoldTimeout passes; m.mu is held.
func (m *VM) waitParked(ctx context.Context, why string) error {
	ctx, cancel := context.WithTimeoutCause(ctx, HoldTimeout, fmt.Errorf("%v passed", HoldTimeout))
	defer cancel()
	// Wake this wait when ctx ends, so a vCPU that never parks cannot
	// hang the caller.
	stopWake := context.AfterFunc(ctx, func() {
		m.mu.Lock()
		m.cond.Broadcast()
		m.mu.Unlock()
	})
	defer stopWake()
	for m.parked < m.running && !m.stopping() {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %d of %d vCPUs did not stop: %w", why, m.running-m.parked, m.running, context.Cause(ctx))
		}
		m.cond.Wait()
	}
	if m.stopping() {
		return ErrStopped
	}
	return nil
}

// held reports whether the vCPUs are stopped by a hold; m.mu is held.
func (m *VM) held() bool { return m.holds > 0 && m.parked >= m.running }

// Pause is the user's hold (the control API's pause, restore --paused): it
// stays until Resume. Pausing a paused machine does nothing.
func (m *VM) Pause(ctx context.Context) error {
	m.userMu.Lock()
	defer m.userMu.Unlock()
	if m.user != nil {
		return nil
	}
	h, err := m.Hold(ctx, "pause")
	if err != nil {
		return err
	}
	m.user = h
	return nil
}

// Resume releases the user's hold. The vCPUs run again unless another hold
// (a snapshot or fork in progress) is still in force.
func (m *VM) Resume(context.Context) error {
	m.userMu.Lock()
	defer m.userMu.Unlock()
	if m.stopping() {
		return ErrStopped
	}
	if m.user != nil {
		m.user.Release()
		m.user = nil
	}
	return nil
}
