package memtap

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"time"
	"unsafe"

	"github.com/sfvmm/sfvmm/memtap/internal/mcdist"
	"github.com/sfvmm/sfvmm/memtap/uffd"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"golang.org/x/sys/unix"
)

// The helper's side of multicast (mcdist): it joins the family's group,
// installs every page that comes there and that this clone lacks, asks
// again on its stream (RequestUnicast) for a page a reply said went to the
// group but that did not come, and reports how fast pages come so that the
// server paces to the slowest clone. A clone whose network drops multicast
// (many clouds do) notices that pages stop coming and leaves the group:
// it asks for everything by unicast from then on.

// retryAfter is how long a page a reply said went to the group may take
// to come before it is asked again on the stream. The server sends the
// datagrams before the reply, on a shorter path (no TLS relay), so a page
// that has not come by then is almost surely lost.
const retryAfter = 100 * time.Millisecond

// leaveAfter is how many pages may go missing on the group, with no
// datagram at all ever coming, before the clone leaves it: a network that
// drops multicast costs it a few of retryAfter, once. A clone that has
// had anything from the group stays: a lossy network still delivers most
// datagrams, and at times nothing is sent to the group for seconds (every
// clone waits on pages asked again by unicast), which a rule on recent
// silence took for a network without multicast.
const leaveAfter = 16

// group is the handler's multicast state.
type group struct {
	fd     int
	opener *mcdist.Opener
	buf    []byte // one datagram
	body   []byte // its opened body
	// awaiting: pages (region<<40 | page) a reply said went to the
	// group, with when to ask again if they have not come.
	awaiting map[uint64]time.Time
	received uint64    // pages installed from the group since the last report
	reported time.Time // when the last report went
	missed   int       // pages that went missing, while nothing has come
	came     bool      // a datagram has come on the group
	left     bool      // the clone left the group: every page by unicast
	name     string    // the group, for messages
}

// joinGroup joins the group of w from the interface at local.
func (h *handler) joinGroup(w wire.Welcome, local net.Addr) error {
	ta, ok := local.(*net.TCPAddr)
	if !ok || ta.IP.To4() == nil {
		return fmt.Errorf("multicast: join from %v: not an IPv4 address", local)
	}
	o, err := mcdist.NewOpener(h.cfg.Key)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("multicast socket: %w", err)
	}
	// Room for bursts: a window of pages arrives at once. The forced
	// size needs CAP_NET_ADMIN; without it the plain one is capped.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 16<<20)
	}
	err = errors.Join(
		// Clones of one family on one host all bind the group's port.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
		unix.Bind(fd, &unix.SockaddrInet4{Addr: w.Group, Port: int(w.Port)}),
		unix.SetsockoptIPMreq(fd, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP, &unix.IPMreq{Multiaddr: w.Group, Interface: [4]byte(ta.IP.To4())}),
	)
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("multicast: join %v:%d on %v: %w", net.IP(w.Group[:]), w.Port, ta.IP, err)
	}
	h.mc = &group{fd: fd, opener: o, buf: make([]byte, mcdist.Size+1), body: make([]byte, mcdist.BodySize),
		awaiting: map[uint64]time.Time{}, reported: time.Now(), name: fmt.Sprintf("%v:%d", net.IP(w.Group[:]), w.Port)}
	return nil
}

// firstAsk is the flags of a request for pages not asked before:
// RequestUnicast once the clone has left the group.
func (h *handler) firstAsk() uint32 {
	if h.mc != nil && h.mc.left {
		return wire.RequestUnicast
	}
	return 0
}

// leave leaves the group for good: nothing has come on it while
// leaveAfter pages went missing.
func (h *handler) leave() {
	g := h.mc
	fmt.Fprintf(os.Stderr, "memtap: multicast: %d pages sent to group %s went missing and nothing came on it: leaving it, every page by unicast from now on\n", g.missed, g.name)
	unix.Close(g.fd)
	g.fd, g.left = -1, true
	h.c.mcOff.Store(1)
}

// datagrams installs what has come on the group.
func (h *handler) datagrams() error {
	g := h.mc
	for {
		n, err := unix.Read(g.fd, g.buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("multicast: receive: %w", err)
		}
		h.c.mbytes.Add(uint64(n))
		g.came = true
		// A page this clone has, or that is not in its RAM, is dropped
		// unopened: what the header says does not matter then.
		ri, p, err := g.opener.Peek(g.buf[:n])
		if err == nil && (int64(ri) >= int64(len(h.regions)) || p >= h.regions[ri].pages || h.regions[ri].state[p] == present) {
			continue
		}
		var data []byte
		if err == nil {
			ri, p, data, err = g.opener.Open(g.buf[:n], g.body)
		}
		switch {
		case errors.Is(err, mcdist.ErrReplayed):
			h.c.replayed.Add(1)
			continue
		case err != nil:
			h.c.forged.Add(1)
			continue
		}
		r := &h.regions[ri]
		key := uint64(ri)<<40 | p
		mine := r.state[p] == requested
		delete(g.awaiting, key)
		g.received++
		// Counters first, as in complete.
		h.c.fetched.Add(1)
		h.c.multicast.Add(1)
		if !mine {
			h.c.siblings.Add(1)
		}
		if h.landed(int(ri), p, true) {
			h.c.prefetched.Add(1)
		}
		if _, _, err := h.u.Copy(r.base+uintptr(p)*uffd.PageSize, uintptr(unsafe.Pointer(&data[0])), uffd.PageSize, 0); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("install pages: %w", err)
		}
	}
}

// await notes that page p of region ri went to the group. A clone that
// left the group asks again at once (the reply answered a request sent
// before it left).
func (h *handler) await(ri int, p uint64, now time.Time) {
	if h.mc == nil {
		return
	}
	due := now.Add(retryAfter)
	if h.mc.left {
		due = now
	}
	h.mc.awaiting[uint64(ri)<<40|p] = due
}

// groupDue returns when the group next needs attention: a page to ask
// again for, or a report; zero if never.
func (h *handler) groupDue() time.Time {
	if h.mc == nil {
		return time.Time{}
	}
	due := h.mc.reported.Add(wire.ReportInterval)
	if h.mc.left {
		due = time.Time{}
	}
	for _, t := range h.mc.awaiting {
		if due.IsZero() || t.Before(due) {
			due = t
		}
	}
	return due
}

// groupWork asks again, on the stream, for the pages that did not come on
// the group in time, and sends a report when one is due.
func (h *handler) groupWork(now time.Time) {
	g := h.mc
	if g == nil {
		return
	}
	var late []uint64
	for key, t := range g.awaiting {
		if now.Before(t) {
			continue
		}
		delete(g.awaiting, key)
		if h.regions[key>>40].state[key&(1<<40-1)] != present {
			late = append(late, key)
		}
	}
	if !g.left && !g.came {
		g.missed += len(late)
		if g.missed >= leaveAfter {
			h.leave()
		}
	}
	slices.Sort(late)
	for i := 0; i < len(late); {
		j := i + 1
		for j < len(late) && late[j] == late[j-1]+1 && late[j]>>40 == late[i]>>40 && j-i < wire.MaxBatch {
			j++
		}
		h.c.retried.Add(uint64(j - i))
		h.requestFlags(int(late[i]>>40), late[i]&(1<<40-1), late[j-1]&(1<<40-1)+1, wire.RequestUnicast)
		i = j
	}
	if !g.left && now.Sub(g.reported) >= wire.ReportInterval {
		h.out = wire.Report(g.received).Append(h.out)
		g.received, g.reported = 0, now
	}
}
