package server

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/sfvmm/sfvmm/memtap/internal/mcdist"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"golang.org/x/sys/unix"
)

// The helper's multicast sender (mcdist): an image's TCP clients are told
// the family's group in their Welcome, and the data pages of their
// replies go to the group, sealed, instead of down their stream.
const (
	// forgetAfter: a page sent to the group longer ago than this may be
	// forgotten once a million are remembered; a request for it then
	// sends it again.
	forgetAfter = 200 * time.Millisecond
	// Pacing: the group is sent to at twice the slowest recent receiver's
	// rate, within these bounds, so that a receiver that falls behind
	// slows the sender instead of losing datagrams.
	minRate   = 2000   // pages per second
	maxRate   = 200000 // pages per second
	startRate = 10000  // pages per second, until receivers report
	// reportAge is how long a receiver's report counts.
	reportAge = 4 * wire.ReportInterval
)

// mcast is an image's multicast sender.
type mcast struct {
	fd    int // a UDP socket connected to the group
	group [4]byte
	port  uint16

	// mu guards the sender: held for one page at a time, so that one
	// pace holds for all clients and their pages interleave.
	mu     sync.Mutex
	sealer *mcdist.Sealer
	failed bool                 // a send failed: the group is not used again
	sent   map[uint64]time.Time // region<<40 | page → when it last went out
	dgram  []byte
	tokens float64
	last   time.Time

	// rmu guards reports (by client descriptor): a client's report never
	// waits for another's pages.
	rmu     sync.Mutex
	reports map[int]report
}

type report struct {
	rate float64 // pages per second
	at   time.Time
}

// newMcast opens a sender from iface (an IPv4 address of this host) to
// group (an IPv4 multicast address and port).
func newMcast(iface net.IP, group *net.UDPAddr, key wire.Key) (*mcast, error) {
	ip4, g4 := iface.To4(), group.IP.To4()
	if ip4 == nil || g4 == nil || !g4.IsMulticast() || group.Port <= 0 || group.Port > 65535 {
		return nil, fmt.Errorf("multicast from %v to %v: want IPv4 addresses, the second a group with a port", iface, group)
	}
	m := &mcast{group: [4]byte(g4), port: uint16(group.Port),
		sent: map[uint64]time.Time{}, reports: map[int]report{}, dgram: make([]byte, 0, mcdist.Size), tokens: 64}
	var err error
	if m.sealer, err = mcdist.NewSealer(key); err != nil {
		return nil, err
	}
	// Non-blocking: a send that would wait (the host's network is
	// backed up) sends the page on the client's stream instead.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("multicast socket: %w", err)
	}
	local := [4]byte(ip4)
	err = errors.Join(
		unix.SetsockoptInet4Addr(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_IF, local),
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_TTL, 1),
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, 1), // clones on this host
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20),
		unix.Bind(fd, &unix.SockaddrInet4{Addr: local}),
		unix.Connect(fd, &unix.SockaddrInet4{Addr: m.group, Port: int(m.port)}),
	)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("multicast socket on %v: %w", iface, err)
	}
	m.fd = fd
	return m, nil
}

func (m *mcast) close() { unix.Close(m.fd) }

// report takes client fd's receive report.
func (m *mcast) report(fd int, received uint64) {
	m.rmu.Lock()
	defer m.rmu.Unlock()
	m.reports[fd] = report{rate: float64(received) / wire.ReportInterval.Seconds(), at: time.Now()}
}

// gone forgets client fd.
func (m *mcast) gone(fd int) {
	m.rmu.Lock()
	defer m.rmu.Unlock()
	delete(m.reports, fd)
}

// rate is the pace now.
func (m *mcast) rate(now time.Time) float64 {
	m.rmu.Lock()
	defer m.rmu.Unlock()
	slowest := -1.0
	for fd, r := range m.reports {
		if now.Sub(r.at) > reportAge {
			delete(m.reports, fd)
			continue
		}
		if slowest < 0 || r.rate < slowest {
			slowest = r.rate
		}
	}
	if slowest < 0 {
		return startRate
	}
	return min(max(2*slowest, minRate), maxRate)
}

// send multicasts the data pages of q's reply (flags and data as
// image.read made them) that did not go out since the client joined the
// group, marking each page sent, or sent before,
// PageMulticast. It returns the data of the pages still to go on the
// client's stream (those the group could not take, in order) and how many
// it sent.
func (m *mcast) send(q wire.Request, flags []byte, data [][]byte, joined time.Time) (stream [][]byte, sent int) {
	stream = data[:0]
	k := 0
	for i, f := range flags {
		if f != wire.PageData {
			continue
		}
		d := data[k]
		k++
		if m.sendPage(q.Region, q.First+uint64(i), d, joined) {
			flags[i] = wire.PageMulticast
			sent++
		} else {
			stream = append(stream, d)
		}
	}
	return stream, sent
}

// sendPage sends a page to the group unless it went since the client
// asking joined the group (lockstep: siblings that run the same code fault
// on the same pages at about the same time, and share one datagram): then
// its request crossed the datagram, which it has or will have, and it asks
// again on its stream (RequestUnicast) if the datagram was lost. A page
// that went before the client joined is sent again, however recently it
// went: the client was not there to get it. It reports whether the page is on the group (sent now or before), false
// when the socket had no room or the host cannot send to the group (no
// route, an interface gone): the page goes on the client's stream, and
// after an error so does every page.
func (m *mcast) sendPage(region uint32, page uint64, d []byte, joined time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failed {
		return false
	}
	key := uint64(region)<<40 | page
	if t, ok := m.sent[key]; ok && t.After(joined) {
		return true
	}
	m.pace()
	// The time before the write: a page marked sent after a client
	// joined surely went after it joined.
	now := time.Now()
	m.dgram = m.sealer.Seal(m.dgram[:0], region, page, d)
	_, err := unix.Write(m.fd, m.dgram)
	switch {
	case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOBUFS):
		return false
	case err != nil:
		m.failed = true
		fmt.Fprintf(os.Stderr, "memtap server: multicast to %v:%d: %v: every page goes on its client's stream from now on\n", net.IP(m.group[:]), m.port, err)
		return false
	}
	m.sent[key] = now
	if len(m.sent) > 1<<20 {
		for key, t := range m.sent {
			if now.Sub(t) >= forgetAfter {
				delete(m.sent, key)
			}
		}
	}
	return true
}

// pace waits for a token of the bucket filled at the current rate; m.mu
// held.
func (m *mcast) pace() {
	for {
		now := time.Now()
		r := m.rate(now)
		if !m.last.IsZero() {
			m.tokens = min(m.tokens+now.Sub(m.last).Seconds()*r, 64)
		}
		m.last = now
		if m.tokens >= 1 {
			m.tokens--
			return
		}
		time.Sleep(time.Duration((1 - m.tokens) / r * float64(time.Second)))
	}
}

// NewGroup picks a random group in 239.192.0.0/14 (organisation-local
// scope) and a port for a family. Families that pick the same one only
// see each other's datagrams fail to authenticate.
func NewGroup() *net.UDPAddr {
	var r [5]byte
	rand.Read(r[:])
	return &net.UDPAddr{IP: net.IPv4(239, 192|r[0]&3, r[1], r[2]|1), Port: 20000 + int(binary.LittleEndian.Uint16(r[3:]))%40000}
}
