package fork

import (
	"errors"
	"fmt"
)

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

// Placer is a Launcher that places clones on hosts with slots of their own
// (the agents of a cluster): a ticket's slots are reserved from it as well
// as from the VM's capacity, and given back to it when the ticket ends.
type Placer interface {
	// Reserve reserves up to n slots for ticket and says how many it got;
	// clones 1 to that many of the ticket are then launched.
	Reserve(ticket uint32, n int) (int, error)
	// Release gives ticket's slots back.
	Release(ticket uint32)
}

// launch starts the ticket's clones from img, each watched by a goroutine.
// The parent runs meanwhile: it never waits for its clones.
func (f *Forker) launch(img *image, t *ticket) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := uint32(1); id <= t.slots; id++ {
		cr := &cloneRun{id: id, done: make(chan struct{})}
		t.clones = append(t.clones, cr)
		img.live++
		c, err := launchOffThread(f.cfg.Launcher, img.descriptor, t.id, id)
		if err != nil {
			f.cfg.Log.Error(fmt.Sprintf("ticket %d: start clone %d: %v", t.id, id, err))
			f.ended(img, cr, err)
			continue
		}
		cr.c = c
		go func() {
			err := c.Wait()
			if err != nil {
				f.cfg.Log.Warn(fmt.Sprintf("ticket %d: clone %d: %v", t.id, id, err))
			}
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

// ended records that a clone ended; f.mu is held. The last clone of an
// image that is not a checkpoint closes it.
func (f *Forker) ended(img *image, cr *cloneRun, err error) {
	f.tickets.ended(cr, err)
	img.live--
	if img.live == 0 && !img.held && img.frozen != nil {
		img.close()
		if f.image == img {
			f.image = nil
		}
	}
}
