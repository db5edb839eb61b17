package vsock

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// What each connection may hold, and how long the host side may take.
const (
	// connBuf is the buf_alloc the device gives the guest on every
	// connection: what the guest may send before the device has written
	// it to the host socket. A guest that sends more loses the
	// connection.
	connBuf = 256 << 10
	// hostBuf bounds what the device reads from a host socket ahead of
	// the guest: past it, it reads no more until the guest has taken
	// some, which its credit and its RX buffers pace.
	hostBuf   = 64 << 10
	readChunk = 16 << 10
	// connectTimeout bounds a host program's CONNECT line, the guest's
	// answer to the REQUEST that follows, and a dial of P_N.
	connectTimeout = 2 * time.Second
	// lingerTimeout bounds how long the device goes on writing what the
	// guest sent before it closed its connection, to a host program that
	// does not read it.
	lingerTimeout = 5 * time.Second
)

type connState int

const (
	stateDialing connState = iota // the guest asked for it; the device dials P_N
	stateRequest                  // a host program asked for it; the guest has not answered
	stateOpen
	stateClosed // out of Device.conns; its goroutines end
)

// conn is one connection. Device.mu guards its fields.
type conn struct {
	key
	state    connState
	sock     *net.UnixConn // the host program's end; nil while dialing
	cond     *sync.Cond    // on Device.mu: the buffers or the state changed
	answered chan struct{} // closed when a stateRequest conn leaves that state

	queued                    bool // in Device.ready
	sendRequest, sendResponse bool // a REQUEST or RESPONSE waits for an RX buffer

	// From the guest to the host socket.
	toHost        []byte
	writing       bool   // the writer is writing bytes it took from toHost
	rxCnt, fwdCnt uint32 // bytes the guest sent; bytes written to the host socket
	sentFwd       uint32 // the fwd_cnt the guest last heard of
	creditAsked   bool   // the guest sent CREDIT_REQUEST
	guestShut     uint32 // the shutdown flags the guest sent
	halfClosed    bool   // the host socket's write side is shut: the guest sends no more
	linger        bool   // closed, but the writer first writes toHost out

	// From the host socket to the guest.
	toGuest          []byte
	txCnt            uint32 // bytes sent to the guest
	peerBuf, peerFwd uint32 // the guest's buf_alloc and fwd_cnt, from its last packet
	hostEOF          bool   // the host program sends no more
	shutSent         bool   // and the guest has heard so
}

func (d *Device) newConn(k key, st connState) *conn {
	cn := &conn{key: k, state: st, cond: sync.NewCond(&d.mu), answered: make(chan struct{})}
	d.conns[k] = cn
	return cn
}

// admit reports whether a new connection fits the bounds: with each
// connection able to leave one RST behind, RSTs stay below
// maxRSTs+maxConns.
func (d *Device) admit() bool {
	return !d.closed && len(d.conns) < maxConns && len(d.rsts) < maxRSTs
}

// credit is how many bytes the guest can take now: its buf_alloc less
// what it has not consumed yet (virtio 1.2, 5.10.6.3).
func (cn *conn) credit() int {
	unread := cn.txCnt - cn.peerFwd
	if unread >= cn.peerBuf {
		return 0 // full, or a fwd_cnt ahead of what was sent
	}
	return int(cn.peerBuf - unread)
}

// creditDue reports that the guest should hear of the bytes written to
// the host socket since it last did: it thinks less than a packet's worth
// of credit is left (Linux's rule at the other end of the stream).
func (cn *conn) creditDue() bool {
	return cn.fwdCnt != cn.sentFwd && int(connBuf)-int(cn.rxCnt-cn.sentFwd) < maxPayload
}

// schedule puts cn in line for an RX buffer, unless it is already, and
// has RX served.
func (d *Device) schedule(cn *conn) {
	if cn.state == stateClosed {
		return
	}
	if !cn.queued {
		cn.queued = true
		d.ready = append(d.ready, cn)
	}
	d.wake(queueRX)
}

// next is cn's next packet for the guest, with at most room bytes of
// data; ok is false when it has none now.
func (d *Device) next(cn *conn, room int) (h header, data []byte, ok bool) {
	h = header{SrcCID: HostCID, DstCID: d.cid, SrcPort: cn.local, DstPort: cn.peer, Type: typeStream,
		BufAlloc: connBuf, FwdCnt: cn.fwdCnt}
	switch {
	case cn.state == stateClosed:
		return h, nil, false
	case cn.sendRequest:
		cn.sendRequest = false
		h.Op = opRequest
	case cn.sendResponse:
		cn.sendResponse = false
		h.Op = opResponse
	case cn.state != stateOpen:
		return h, nil, false
	case len(cn.toGuest) > 0 && room > 0 && cn.credit() > 0:
		n := min(len(cn.toGuest), room, cn.credit(), maxPayload)
		data, cn.toGuest = cn.toGuest[:n], cn.toGuest[n:]
		if len(cn.toGuest) == 0 {
			cn.toGuest = nil
		}
		cn.txCnt += uint32(n)
		h.Op = opRW
		cn.cond.Broadcast() // room for the reader
	case cn.hostEOF && len(cn.toGuest) == 0 && !cn.shutSent:
		cn.shutSent = true
		h.Op, h.Flags = opShutdown, shutSend
	case cn.creditAsked || cn.creditDue():
		h.Op = opCreditUpdate
	default:
		return h, nil, false
	}
	// Every packet tells the guest the device's credit.
	cn.sentFwd, cn.creditAsked = cn.fwdCnt, false
	return h, data, true
}

// onPacket takes packet h, and its payload, on connection cn.
func (d *Device) onPacket(cn *conn, h header, payload [][]byte) {
	cn.peerBuf, cn.peerFwd = h.BufAlloc, h.FwdCnt // every packet carries the guest's credit
	switch {
	case h.Op == opRST:
		d.drop(cn, false)
		return
	case h.Op == opResponse && cn.state == stateRequest:
		cn.state = stateOpen
		close(cn.answered)
	case h.Op == opRW && cn.state == stateOpen && cn.guestShut&shutSend == 0:
		if int(cn.rxCnt-cn.fwdCnt)+int(h.Len) > connBuf {
			d.log.Debug(fmt.Sprintf("vsock: guest port %d sent past its credit to host port %d", cn.peer, cn.local))
			d.reset(cn)
			return
		}
		for _, b := range payload {
			cn.toHost = append(cn.toHost, b...)
		}
		cn.rxCnt += h.Len
		cn.cond.Broadcast()
	case h.Op == opShutdown && cn.state == stateOpen:
		cn.guestShut |= h.Flags & (shutRcv | shutSend)
		if cn.guestShut&shutRcv != 0 {
			cn.toGuest = nil
		}
		if cn.guestShut == shutRcv|shutSend {
			// The guest closed: it waits for a RST. What it sent
			// before still goes to the host program.
			d.drop(cn, len(cn.toHost) > 0 || cn.writing)
			d.rsts = append(d.rsts, d.rstFor(cn))
			d.wake(queueRX)
			return
		}
		cn.cond.Broadcast()
	case h.Op == opCreditUpdate: // the credit, taken above, may let data go
	case h.Op == opCreditRequest:
		cn.creditAsked = true
	default:
		// A REQUEST on an open connection, an answer out of turn, data
		// before the connection is open or after the guest's own
		// shutdown, an unknown operation.
		d.reset(cn)
		return
	}
	d.schedule(cn)
}

// rstFor is the RST that ends cn for the guest.
func (d *Device) rstFor(cn *conn) header {
	return header{SrcCID: HostCID, DstCID: d.cid, SrcPort: cn.local, DstPort: cn.peer, Type: typeStream, Op: opRST}
}

// reset ends cn for both ends: its host socket closes, the guest gets a
// RST.
func (d *Device) reset(cn *conn) {
	if cn.state == stateClosed {
		return
	}
	d.drop(cn, false)
	d.rsts = append(d.rsts, d.rstFor(cn))
	d.wake(queueRX)
}

// drop takes cn out of the device: its goroutines end and its host socket
// closes, at once or, lingering, once the writer has written toHost out.
func (d *Device) drop(cn *conn, linger bool) {
	if cn.state == stateClosed {
		return
	}
	if cn.state == stateRequest {
		close(cn.answered)
	}
	cn.state = stateClosed
	if d.conns[cn.key] == cn {
		delete(d.conns, cn.key)
	}
	if cn.queued {
		d.ready = slices.DeleteFunc(d.ready, func(c *conn) bool { return c == cn })
		cn.queued = false
	}
	cn.toGuest = nil
	if linger && d.lingering < maxConns {
		cn.linger = true
		d.lingering++
		cn.sock.SetWriteDeadline(time.Now().Add(lingerTimeout))
	} else if cn.sock != nil {
		d.closeSock(cn.sock)
	}
	cn.cond.Broadcast()
}

// unlinger ends a lingering connection: its host socket closes.
func (d *Device) unlinger(cn *conn) {
	if cn.linger {
		cn.linger = false
		d.lingering--
		d.closeSock(cn.sock)
	}
}

// dropAll drops every connection, without a word to the guest.
func (d *Device) dropAll() {
	for _, cn := range d.conns {
		d.drop(cn, false)
	}
}

func (d *Device) closeSock(s *net.UnixConn) {
	if d.socks[s] {
		delete(d.socks, s)
		s.Close()
	}
}

// dial opens the connection the guest asks for with REQUEST h: on a
// goroutine, since connecting to P_N may block, the device connects and
// answers RESPONSE, or RST if nothing listens there.
func (d *Device) dial(k key, h header) {
	if !d.admit() {
		d.log.Debug(fmt.Sprintf("vsock: guest port %d: refused, %d connections and %d RSTs pending", k.peer, len(d.conns), len(d.rsts)))
		d.rst(h)
		return
	}
	cn := d.newConn(k, stateDialing)
	cn.peerBuf, cn.peerFwd = h.BufAlloc, h.FwdCnt
	path := d.dialTo + "_" + strconv.FormatUint(uint64(k.local), 10)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		dialer := net.Dialer{Timeout: connectTimeout}
		c, err := dialer.DialContext(d.ctx, "unix", path)
		d.mu.Lock()
		if err != nil {
			d.log.Debug(fmt.Sprintf("vsock: guest port %d to host port %d: %v", k.peer, k.local, err))
			d.reset(cn)
			d.mu.Unlock()
			return
		}
		s := c.(*net.UnixConn)
		if cn.state == stateClosed {
			d.mu.Unlock()
			s.Close()
			return
		}
		d.socks[s] = true
		cn.sock, cn.state, cn.sendResponse = s, stateOpen, true
		d.schedule(cn)
		d.startWriter(cn)
		d.mu.Unlock()
		d.readHost(cn)
	}()
}

// accept takes host programs' connections to P.
func (d *Device) accept() {
	defer d.wg.Done()
	for {
		s, err := d.ln.AcceptUnix()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of file descriptors, say: try again, but not at
			// once.
			d.log.Warn(fmt.Sprintf("vsock: accept on %s: %v", d.path, err))
			select {
			case <-d.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			s.Close()
			return
		}
		d.socks[s] = true
		d.wg.Add(1)
		d.mu.Unlock()
		go d.serveHost(s)
	}
}

// serveHost serves a host program's connection to P: its CONNECT line, a
// REQUEST to the guest, "OK <host port>\n" once the guest answers, then
// the stream.
func (d *Device) serveHost(s *net.UnixConn) {
	defer d.wg.Done()
	port, err := readConnect(s)
	d.mu.Lock()
	if err != nil || !d.admit() {
		if err == nil {
			err = fmt.Errorf("guest port %d refused: %d connections, %d RSTs pending", port, len(d.conns), len(d.rsts))
		}
		if !d.closed {
			d.log.Warn(fmt.Sprintf("vsock: host connection to %s: %v", d.path, err))
		}
		d.closeSock(s)
		d.mu.Unlock()
		return
	}
	cn := d.newConn(key{local: d.localPort(port), peer: port}, stateRequest)
	cn.sock, cn.sendRequest = s, true
	d.schedule(cn)
	d.mu.Unlock()

	timer := time.NewTimer(connectTimeout)
	select {
	case <-cn.answered:
	case <-timer.C:
	}
	timer.Stop()
	d.mu.Lock()
	if cn.state == stateRequest {
		d.reset(cn) // the guest did not answer
	}
	// A guest that answered may have sent its data and closed already:
	// the host program gets the OK, the data, then the end.
	if cn.state != stateOpen && !cn.linger {
		d.mu.Unlock()
		return
	}
	d.mu.Unlock()
	_, err = fmt.Fprintf(s, "OK %d\n", cn.local)
	d.mu.Lock()
	if err != nil {
		d.reset(cn)
		d.unlinger(cn)
		d.mu.Unlock()
		return
	}
	d.startWriter(cn)
	d.mu.Unlock()
	d.readHost(cn)
}

// readConnect reads a host program's "CONNECT <port>\n", a byte at a time
// so as to take nothing of the stream behind it.
func readConnect(s *net.UnixConn) (uint32, error) {
	s.SetReadDeadline(time.Now().Add(connectTimeout))
	defer s.SetReadDeadline(time.Time{})
	var line []byte
	b := make([]byte, 1)
	for len(line) < 32 {
		if _, err := io.ReadFull(s, b); err != nil {
			return 0, fmt.Errorf("read CONNECT line: %w", err)
		}
		if b[0] == '\n' {
			arg, ok := strings.CutPrefix(string(line), "CONNECT ")
			port, err := strconv.ParseUint(strings.TrimSpace(arg), 10, 32)
			if !ok || err != nil {
				return 0, fmt.Errorf("%q: want CONNECT <port>", line)
			}
			return uint32(port), nil
		}
		line = append(line, b[0])
	}
	return 0, fmt.Errorf("no CONNECT line in the first %d bytes", len(line))
}

// localPort picks the host port of a host-initiated connection to guest
// port peer.
func (d *Device) localPort(peer uint32) uint32 {
	for {
		p := d.nextPort
		d.nextPort++
		if d.nextPort == 0 {
			d.nextPort = firstLocalPort
		}
		if d.conns[key{p, peer}] == nil {
			return p
		}
	}
}

// startWriter starts cn's writer, if cn is open, or closed but lingering.
func (d *Device) startWriter(cn *conn) {
	if cn.state == stateOpen || cn.linger {
		d.wg.Add(1)
		go d.writeHost(cn)
	}
}

// writeHost writes what the guest sends on cn to the host socket. A host
// program that does not read blocks this goroutine and, once the guest
// has used its credit, the guest's writes; never a vCPU.
func (d *Device) writeHost(cn *conn) {
	defer d.wg.Done()
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		for len(cn.toHost) == 0 && cn.state == stateOpen && (cn.guestShut&shutSend == 0 || cn.halfClosed) {
			cn.cond.Wait()
		}
		switch {
		case cn.state == stateClosed && !cn.linger:
			return // drop closed the socket
		case len(cn.toHost) == 0 && cn.linger:
			d.unlinger(cn) // all written
			return
		case len(cn.toHost) == 0:
			// The guest sends no more: the host program reads its
			// end.
			cn.sock.CloseWrite()
			cn.halfClosed = true
			continue
		}
		data := cn.toHost
		cn.toHost, cn.writing = nil, true
		d.mu.Unlock()
		_, err := cn.sock.Write(data)
		d.mu.Lock()
		cn.writing = false
		cn.fwdCnt += uint32(len(data))
		if err != nil {
			d.reset(cn)
			d.unlinger(cn)
			return
		}
		if cn.creditDue() {
			d.schedule(cn)
		}
	}
}

// readHost reads what the host program sends on cn, for the guest, while
// cn is open.
func (d *Device) readHost(cn *conn) {
	buf := make([]byte, readChunk)
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		for len(cn.toGuest) >= hostBuf && cn.state == stateOpen {
			cn.cond.Wait()
		}
		if cn.state != stateOpen {
			return
		}
		d.mu.Unlock()
		n, err := cn.sock.Read(buf)
		d.mu.Lock()
		if cn.state != stateOpen {
			return
		}
		if cn.guestShut&shutRcv == 0 {
			cn.toGuest = append(cn.toGuest, buf[:n]...)
		}
		switch {
		case errors.Is(err, io.EOF):
			cn.hostEOF = true
		case err != nil:
			d.reset(cn)
		}
		d.schedule(cn)
		cn.cond.Broadcast()
		if err != nil {
			return
		}
	}
}
