package fork

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
)

// deviceHost is the fork device's Host: the guest's calls, made on a vCPU's
// exit. It waits for nothing unbounded: a guest's fork holds its own
// vCPUs only up to vmm.HoldTimeout.
type deviceHost struct{ f *Forker }

func (h deviceHost) RequestTicket(n uint32) (int32, forkdev.Errno) {
	f := h.f
	t, errno := f.requestTicket(n)
	if errno != 0 {
		return 0, errno
	}
	// A fork is coming: start the memory server now, while the guest
	// runs, rather than in sf_clone. (An error shows again there.)
	go f.prepare()
	return int32(t.id), 0
}

func (h deviceHost) TicketSlots(id uint32) (int32, forkdev.Errno) {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	return h.f.tickets.slots(id)
}

func (h deviceHost) Clone(vcpu int, id uint32) (int32, forkdev.Errno) {
	f := h.f
	f.mu.Lock()
	t, errno := f.tickets.take(id)
	f.mu.Unlock()
	if errno != 0 {
		return 0, errno
	}
	img, err := f.freeze(context.Background(), vcpu, forkdev.CallClone, false)
	if err != nil {
		f.mu.Lock()
		t.used = false
		f.mu.Unlock()
		f.cfg.Log.Error(fmt.Sprintf("sf_clone: %v", err))
		return h.fail(vcpu, forkdev.EFORK)
	}
	f.infof("fork: ticket %d: sf_clone of %d clones, parent paused %v", t.id, t.slots, img.paused.Round(time.Microsecond))
	f.launch(img, t)
	return 0, 0
}

func (h deviceHost) CheckpointParent(vcpu int) (int32, forkdev.Errno) {
	img, err := h.f.freeze(context.Background(), vcpu, forkdev.CallCheckpointParent, true)
	if errors.Is(err, ErrBusy) {
		return 0, forkdev.EBUSY
	}
	if err != nil {
		h.f.cfg.Log.Error(fmt.Sprintf("sf_checkpoint_parent: %v", err))
		return h.fail(vcpu, forkdev.EFORK)
	}
	return int32(img.id), 0
}

// fail answers a fork call with errno. The hold may already have completed
// the call's port read with the parent's result, so the answer is
// rewritten in the caller's registers (if the read is still pending, the
// device completes it with the same errno).
func (h deviceHost) fail(vcpu int, errno forkdev.Errno) (int32, forkdev.Errno) {
	h.f.m.FailCall(vcpu, errno)
	return 0, errno
}

func (h deviceHost) CreateClones(checkpoint, id uint32) forkdev.Errno {
	f := h.f
	f.mu.Lock()
	img := f.image
	if img == nil || img.id != checkpoint || !img.held {
		f.mu.Unlock()
		return forkdev.ENOCHECKPT
	}
	t, errno := f.tickets.take(id)
	f.mu.Unlock()
	if errno != 0 {
		return errno
	}
	f.launch(img, t)
	return 0
}

func (h deviceHost) Join(id uint32, wait time.Duration) (int32, forkdev.Errno) {
	return h.f.join(id, wait)
}

func (h deviceHost) Kill(id uint32) forkdev.Errno { return h.f.kill(id) }
