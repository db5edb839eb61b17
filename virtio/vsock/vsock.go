// Package vsock is virtio-vsock (virtio 1.2, 5.10): stream sockets
// between the guest and programs on the host, with no network between
// them. It is not a socket layer for the host: host programs reach the
// guest through Unix sockets, by Firecracker's convention:
//
//   - A host program connects to the device's socket path P and writes
//     "CONNECT <port>\n"; the device connects to that port of the guest
//     and answers "OK <host port>\n", after which the Unix connection
//     carries the stream. If the guest refuses, the device closes it.
//   - A guest connection to port N of the host (CID 2) makes the device
//     connect to the Unix socket "D_N", where D is P unless the machine
//     says otherwise: a clone's is its parent's P, so that the clones of
//     a family reach the host services their parent reached; if nothing
//     listens there, the guest's connect fails.
//
// Connections do not survive a snapshot or a fork: the host programs at
// their far ends belong to the saved VM, or to the parent. The device's
// state is its CID alone, and a restored device tells the guest that its
// transport was reset (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET), so that the
// guest drops its connections and reads the CID again.
//
// The guest is untrusted: a malformed packet fails the device; a packet
// that is well formed but wrong (another CID, no such connection) gets a
// RST; the connections, and the bytes each one buffers either way, are
// bounded. Host sockets are read and written by goroutines of the device,
// never by a vCPU: a host program that stops reading stalls its own
// connection, through the guest's credit, and nothing else.
package vsock

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/sfvmm/sfvmm/virtio"
)

// Type is virtio's device ID for a socket device.
const Type = 19

// HostCID is the host's address: where the guest connects to reach it.
const HostCID = 2

// Queues (virtio 1.2, 5.10.2): packets for the guest, packets from it,
// and events for it.
const (
	queueRX = iota
	queueTX
	queueEvent
)

// QueueSize is the largest size of the RX and TX queues; the event
// queue needs few entries (Linux posts 8).
const QueueSize = 256

const eventQueueSize = 16

// eventTransportReset is VIRTIO_VSOCK_EVENT_TRANSPORT_RESET's id.
const eventTransportReset = 0

// Bounds on what the guest can make the device hold.
const (
	maxConns = 1024 // connections at once, open or being opened
	// maxRSTs bounds the RSTs waiting for RX buffers that answer
	// packets on no connection; past it the device takes no more TX
	// packets until the guest takes some RSTs.
	maxRSTs = 256
)

// State is the device's state: its CID. Connections are not state: see
// the package comment.
type State struct {
	CID uint64
}

// Device is a virtio-vsock device.
type Device struct {
	path   string // P: where host programs connect
	dialTo string // D: D_N is where guest connections to port N go
	log    *slog.Logger
	ln     *net.UnixListener
	ctx    context.Context // ends dials in progress when the device closes
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the device
	wakeup chan struct{}  // wakes the waker: kicks has bits set
	kicks  atomic.Uint32  // queues the waker must kick: bit q for queue q

	// mu guards the fields below and every conn's. Handle runs with the
	// transport's lock held and takes mu; the device's goroutines take
	// mu but never the transport's lock, and the waker calls kick
	// without mu.
	mu         sync.Mutex
	kick       func(q int)
	cid        uint64
	conns      map[key]*conn
	socks      map[*net.UnixConn]bool // every open host socket, closed by Close
	ready      []*conn                // connections that may have a packet for the guest, in turn
	rsts       []header               // RSTs for packets on no connection, to send first
	txStalled  bool                   // a TX packet waits for room in rsts
	resetEvent bool                   // a TRANSPORT_RESET waits for an event buffer
	nextPort   uint32                 // host port for the next host-initiated connection
	lingering  int                    // connections the guest ended whose host sockets are still being written
	closed     bool
}

// key names a connection: its host port and its guest port.
type key struct{ local, peer uint32 }

// maxPath is the longest path of a Unix socket (sun_path, less its NUL).
const maxPath = 107

// firstLocalPort is where the host ports of host-initiated connections
// start, far above the ports host programs listen on as P_N.
const firstLocalPort = 1 << 30

// New returns the device for guest CID cid, listening for host programs
// on the Unix socket path, which must not exist yet (Close removes it),
// and sending the guest's connections to port N to dial_N (dial "":
// path_N).
func New(cid uint64, path, dial string, log *slog.Logger) (*Device, error) {
	if err := checkCID(cid); err != nil {
		return nil, err
	}
	if dial == "" {
		dial = path
	}
	// D_N must fit a Unix socket address too, for any port N.
	if n := len(dial) + len("_4294967295"); n > maxPath || len(path) > maxPath {
		return nil, fmt.Errorf("vsock: socket path %s: %d bytes with a port, more than %d", dial, n, maxPath)
	}
	d := newDevice(cid, path, log)
	d.dialTo = dial
	ln, err := listenUnix(path)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("vsock: %w", err)
	}
	d.ln = ln
	d.wg.Add(1)
	go d.accept()
	return d, nil
}

// listenUnix listens on the Unix socket path. A socket file there that no
// one listens on (a VMM that was killed leaves its own) is replaced; a
// live one, or any other file, is not.
func listenUnix(path string) (*net.UnixListener, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		return ln, err
	}
	if fi, serr := os.Lstat(path); serr != nil || fi.Mode().Type() != fs.ModeSocket {
		return nil, err
	}
	c, derr := net.Dial("unix", path)
	if derr == nil {
		c.Close()
		return nil, err // in use
	}
	if !errors.Is(derr, syscall.ECONNREFUSED) {
		return nil, err
	}
	os.Remove(path)
	return net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
}

// newDevice returns the device without its listener: guest connections
// only (fuzzing).
func newDevice(cid uint64, path string, log *slog.Logger) *Device {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Device{path: path, dialTo: path, log: log, ctx: ctx, cancel: cancel, wakeup: make(chan struct{}, 1),
		cid: cid, conns: map[key]*conn{}, socks: map[*net.UnixConn]bool{}, nextPort: firstLocalPort}
	d.wg.Add(1)
	go d.waker()
	return d
}

// checkCID refuses the reserved CIDs: 0 to 2 (hypervisor, local, host)
// and 2^32-1 (any). Linux keeps a CID in 32 bits.
func checkCID(cid uint64) error {
	if cid < 3 || cid >= 1<<32-1 {
		return fmt.Errorf("vsock: guest CID %d: want 3 to %d", cid, uint64(1<<32-2))
	}
	return nil
}

// Close drops every connection and ends the device's goroutines; it
// kicks no queue once it has returned.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.dropAll()
	for s := range d.socks {
		d.closeSock(s)
	}
	d.mu.Unlock()
	d.cancel()
	var err error
	if d.ln != nil {
		err = d.ln.Close()
	}
	d.wg.Wait()
	return err
}

func (*Device) Type() uint32     { return Type }
func (*Device) Features() uint64 { return 0 } // stream sockets, implied when no type is negotiated (5.10.3)
func (*Device) QueueSizes() []uint16 {
	return []uint16{QueueSize, QueueSize, eventQueueSize}
}

// Config is struct virtio_vsock_config: guest_cid, le64.
func (d *Device) Config() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return binary.LittleEndian.AppendUint64(nil, d.cid)
}

// SetKick takes the transport's kick (virtio.Kicker).
func (d *Device) SetKick(kick func(q int)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.kick = kick
}

// wake has the waker kick queue q. It never blocks: Handle and the
// device's goroutines call it, mu held or not.
func (d *Device) wake(q int) {
	d.kicks.Or(1 << q)
	select {
	case d.wakeup <- struct{}{}:
	default:
	}
}

// waker kicks the queues wake asks for. Kicks come from a goroutine of
// their own because kick takes the transport's lock, which Handle holds:
// neither Handle nor a goroutine holding mu may call it.
func (d *Device) waker() {
	defer d.wg.Done()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-d.wakeup:
		}
		d.mu.Lock()
		kick := d.kick
		d.mu.Unlock()
		qs := d.kicks.Swap(0)
		for q := range 3 {
			if kick != nil && qs&(1<<q) != 0 {
				kick(q)
			}
		}
	}
}

// Save returns the device's state.
func (d *Device) Save() (State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return State{CID: d.cid}, nil
}

// Restore gives the device the CID in s (a clone's state names the
// clone's own CID) and resets its transport (TransportReset). Call it
// after the transport's Restore, whose queues the reset event needs.
func (d *Device) Restore(s State) error {
	if err := checkCID(s.CID); err != nil {
		return err
	}
	d.mu.Lock()
	d.cid = s.CID
	d.mu.Unlock()
	d.TransportReset()
	return nil
}

// TransportReset drops every connection, closing their host sockets
// without a word to the guest, and tells the guest so with a
// TRANSPORT_RESET event, upon which it resets its sockets and reads its
// CID again. The event waits for a buffer in the event queue.
func (d *Device) TransportReset() {
	d.mu.Lock()
	d.dropAll()
	d.rsts = nil
	d.resetEvent = true
	if d.txStalled {
		d.txStalled = false
		d.wake(queueTX)
	}
	d.mu.Unlock()
	d.wake(queueEvent)
}

// Handle serves the guest's queues: it takes the guest's packets from TX,
// fills RX buffers with the device's packets and the event buffers with
// events, and leaves an RX or event buffer available while the device has
// nothing for it (virtio.ErrNotNow).
func (d *Device) Handle(q int, c virtio.Chain) (uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch q {
	case queueRX:
		return d.toGuest(c)
	case queueTX:
		return 0, d.fromGuest(c)
	case queueEvent:
		if len(c.Readable) != 0 || c.WritableLen() < 4 {
			return 0, virtio.Malformed("vsock event buffer: %d device-readable, %d device-writable bytes, want 0 and 4", c.ReadableLen(), c.WritableLen())
		}
		if !d.resetEvent {
			return 0, virtio.ErrNotNow
		}
		d.resetEvent = false
		var ev [4]byte
		binary.LittleEndian.PutUint32(ev[:], eventTransportReset)
		n := 0
		for _, s := range span(c.Writable, 0, len(ev)) {
			n += copy(s, ev[n:])
		}
		return uint32(len(ev)), nil
	}
	return 0, nil
}

// toGuest fills an RX buffer with the next packet for the guest: RSTs
// first, then the connections in turn.
func (d *Device) toGuest(c virtio.Chain) (uint32, error) {
	room := c.WritableLen() - hdrLen
	if len(c.Readable) != 0 || room < 0 {
		return 0, virtio.Malformed("vsock RX buffer: %d device-readable, %d device-writable bytes, want 0 and at least %d", c.ReadableLen(), c.WritableLen(), hdrLen)
	}
	if len(d.rsts) > 0 {
		h := d.rsts[0]
		d.rsts = d.rsts[1:]
		if d.txStalled && len(d.rsts) < maxRSTs {
			d.txStalled = false
			d.wake(queueTX)
		}
		return writePacket(c, h, nil), nil
	}
	for len(d.ready) > 0 {
		cn := d.ready[0]
		d.ready = d.ready[1:]
		cn.queued = false
		h, data, ok := d.next(cn, room)
		if !ok {
			continue
		}
		n := writePacket(c, h, data)
		d.schedule(cn) // it may have more: behind the others
		return n, nil
	}
	return 0, virtio.ErrNotNow
}

// fromGuest takes a packet the guest sent.
func (d *Device) fromGuest(c virtio.Chain) error {
	if len(d.rsts) >= maxRSTs {
		d.txStalled = true
		return virtio.ErrNotNow
	}
	h, payload, err := readPacket(c)
	if err != nil {
		return err
	}
	if h.SrcCID != d.cid || h.DstCID != HostCID || h.Type != typeStream {
		d.rst(h)
		return nil
	}
	k := key{local: h.DstPort, peer: h.SrcPort}
	cn := d.conns[k]
	switch {
	case cn == nil && h.Op == opRequest:
		d.dial(k, h)
	case cn == nil && h.Op != opRST:
		d.rst(h)
	case cn != nil:
		d.onPacket(cn, h, payload)
	}
	return nil
}

// rst answers packet h with a RST; never a RST with a RST.
func (d *Device) rst(h header) {
	if h.Op == opRST {
		return
	}
	d.rsts = append(d.rsts, h.reply(opRST))
	d.wake(queueRX)
}
