package vsock

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/virtio"
	"github.com/sfvmm/sfvmm/virtio/virtiotest"
	"github.com/sfvmm/sfvmm/vmm/devices/devtest"
)

const (
	testCID  = 3
	wait     = 5 * time.Second // bound on every wait for the device
	guestBuf = 256 << 10       // the buf_alloc the test guest gives
)

// guest plays Linux's vsock driver against the device, through a fake
// virtio driver on fake RAM.
type guest struct {
	t     *testing.T
	drv   *virtiotest.Driver
	dev   *Device
	path  string
	inbox []packet
}

type packet struct {
	header
	data []byte
}

// newGuest makes a device listening in a fresh directory and a guest
// driving it, with rx RX buffers laid out as Linux 6.1 lays them out
// (header and data in buffers of their own) and events event buffers.
func newGuest(t *testing.T, rx, events int) *guest {
	t.Helper()
	return newGuestDial(t, rx, events, "")
}

// newGuestDial is newGuest with the guest's connections going to dial_N.
func newGuestDial(t *testing.T, rx, events int, dial string) *guest {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v")
	if len(path)+12 > 107 {
		t.Fatalf("socket path %s too long", path)
	}
	dev, err := New(testCID, path, dial, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	g := &guest{t: t, drv: virtiotest.NewDriver(t, dev, 16, nil), dev: dev, path: path}
	g.drv.Setup(^uint64(0))
	for range rx {
		g.drv.Offer(queueRX, nil, hdrLen, 4096)
	}
	for range events {
		g.drv.Offer(queueEvent, nil, 4)
	}
	return g
}

// hdr is a header from the guest, guest port to host port.
func hdr(op uint16, guestPort, hostPort uint32) header {
	return header{SrcCID: testCID, DstCID: HostCID, SrcPort: guestPort, DstPort: hostPort, Type: typeStream, Op: op, BufAlloc: guestBuf}
}

// send has the guest send a packet, header and data in buffers of their
// own.
func (g *guest) send(h header, data []byte) {
	g.t.Helper()
	h.Len = uint32(len(data))
	b := make([]byte, hdrLen)
	h.put(b)
	bufs := [][]byte{b}
	if len(data) > 0 {
		bufs = append(bufs, data)
	}
	g.drv.Offer(queueTX, bufs)
	g.drv.Take(queueTX)
}

// recv is the next packet the device sent the guest; each RX buffer used
// is offered again.
func (g *guest) recv() packet {
	g.t.Helper()
	for len(g.inbox) == 0 {
		used := g.drv.Await(queueRX, wait)
		if used == nil {
			g.t.Fatalf("no packet for the guest in %v", wait)
		}
		for _, u := range used {
			h, err := parseHeader(u.Data)
			if err != nil {
				g.t.Fatal(err)
			}
			if int(h.Len) != len(u.Data)-hdrLen {
				g.t.Fatalf("packet says %d data bytes, the device wrote %d", h.Len, len(u.Data)-hdrLen)
			}
			g.inbox = append(g.inbox, packet{h, u.Data[hdrLen:]})
			g.drv.Offer(queueRX, nil, hdrLen, 4096)
		}
	}
	p := g.inbox[0]
	g.inbox = g.inbox[1:]
	return p
}

// expect receives the next packet and checks its operation and addresses
// (host port to guest port).
func (g *guest) expect(op uint16, hostPort, guestPort uint32) packet {
	g.t.Helper()
	p := g.recv()
	if p.Op != op || p.SrcCID != HostCID || p.DstCID != testCID || p.SrcPort != hostPort || p.DstPort != guestPort || p.Type != typeStream {
		g.t.Fatalf("got %+v, want op %d from 2:%d to %d:%d", p.header, op, hostPort, testCID, guestPort)
	}
	return p
}

// recvData receives RW packets until n bytes came.
func (g *guest) recvData(n int, hostPort, guestPort uint32) []byte {
	g.t.Helper()
	var got []byte
	for len(got) < n {
		got = append(got, g.expect(opRW, hostPort, guestPort).data...)
	}
	return got
}

func listen(t *testing.T, path string) *net.UnixListener {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func accept(t *testing.T, ln *net.UnixListener) *net.UnixConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(wait))
	c, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(wait))
	return c
}

func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(wait))
	return c
}

func readN(t *testing.T, r io.Reader, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatalf("host read: %v", err)
	}
	return string(b)
}

func expectEOF(t *testing.T, r io.Reader) {
	t.Helper()
	if b, err := io.ReadAll(r); err != nil || len(b) != 0 {
		t.Fatalf("host read %q, %v: want the end", b, err)
	}
}

// awaitConn waits until cond, read under the device's lock, holds for
// connection k; the device signals the connection's cond when its state
// or buffers change.
func awaitConn(t *testing.T, d *Device, k key, what string, cond func(*conn) bool) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	cn := d.conns[k]
	if cn == nil {
		t.Fatalf("no connection %+v", k)
	}
	expired := false
	timer := time.AfterFunc(wait, func() {
		d.mu.Lock()
		expired = true
		cn.cond.Broadcast()
		d.mu.Unlock()
	})
	defer timer.Stop()
	for !cond(cn) {
		if expired {
			t.Fatalf("waited %v for %s", wait, what)
		}
		cn.cond.Wait()
	}
}

// A guest connects to host port 1234: the device connects to P_1234,
// answers RESPONSE, carries bytes both ways, tells the guest of the host
// program's end, and closes the host socket when the guest closes, after
// what it sent.
func TestGuestConnect(t *testing.T) {
	g := newGuest(t, 8, 4)
	ln := listen(t, g.path+"_1234")
	g.send(hdr(opRequest, 5000, 1234), nil)
	if p := g.expect(opResponse, 1234, 5000); p.BufAlloc != connBuf || p.FwdCnt != 0 {
		t.Errorf("RESPONSE buf_alloc %d fwd_cnt %d, want %d 0", p.BufAlloc, p.FwdCnt, connBuf)
	}
	host := accept(t, ln)

	g.send(hdr(opRW, 5000, 1234), []byte("ping"))
	if got := readN(t, host, 4); got != "ping" {
		t.Errorf("host read %q, want ping", got)
	}
	host.Write([]byte("pong"))
	if got := g.recvData(4, 1234, 5000); string(got) != "pong" {
		t.Errorf("guest got %q, want pong", got)
	}
	host.CloseWrite()
	if p := g.expect(opShutdown, 1234, 5000); p.Flags != shutSend {
		t.Errorf("SHUTDOWN flags %d, want %d (the host sends no more)", p.Flags, shutSend)
	}
	g.send(hdr(opRW, 5000, 1234), []byte("last words"))
	sd := hdr(opShutdown, 5000, 1234)
	sd.Flags = shutRcv | shutSend
	g.send(sd, nil)
	g.expect(opRST, 1234, 5000)
	if got := readN(t, host, 10); got != "last words" {
		t.Errorf("host read %q, want the guest's last words", got)
	}
	expectEOF(t, host)
	if f := g.drv.Transport().Failure(); f != "" {
		t.Errorf("device failed: %s", f)
	}
}

// A clone's device sends the guest's connections to its parent's socket
// path (dial), not its own.
func TestGuestConnectDial(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "p")
	g := newGuestDial(t, 8, 4, parent)
	ln := listen(t, parent+"_1234")
	g.send(hdr(opRequest, 5000, 1234), nil)
	g.expect(opResponse, 1234, 5000)
	accept(t, ln)
}

// A host program connects to P and asks for guest port 52: the guest gets
// a REQUEST from a fresh host port; if it answers RESPONSE, the host
// program reads OK and that port, then the stream; if RST, the end.
func TestHostConnect(t *testing.T) {
	t.Run("accepted", func(t *testing.T) {
		g := newGuest(t, 8, 4)
		host := dial(t, g.path)
		host.Write([]byte("CONNECT 52\n"))
		req := g.recv()
		local := req.SrcPort
		if req.Op != opRequest || req.DstPort != 52 || req.DstCID != testCID || local < firstLocalPort || req.BufAlloc != connBuf {
			t.Fatalf("got %+v, want a REQUEST to port 52 from a port above %d", req.header, firstLocalPort)
		}
		g.send(hdr(opResponse, 52, local), nil)
		r := bufio.NewReader(host)
		line, err := r.ReadString('\n')
		if want := fmt.Sprintf("OK %d\n", local); err != nil || line != want {
			t.Fatalf("host read %q, %v: want %q", line, err, want)
		}
		host.Write([]byte("hello"))
		if got := g.recvData(5, local, 52); string(got) != "hello" {
			t.Errorf("guest got %q, want hello", got)
		}
		g.send(hdr(opRW, 52, local), []byte("HELLO"))
		if got := readN(t, r, 5); got != "HELLO" {
			t.Errorf("host read %q, want HELLO", got)
		}
		sd := hdr(opShutdown, 52, local)
		sd.Flags = shutRcv | shutSend
		g.send(sd, nil)
		g.expect(opRST, local, 52)
		expectEOF(t, r)
	})
	t.Run("refused", func(t *testing.T) {
		g := newGuest(t, 8, 4)
		host := dial(t, g.path)
		host.Write([]byte("CONNECT 53\n"))
		req := g.recv()
		g.send(hdr(opRST, 53, req.SrcPort), nil)
		expectEOF(t, host)
	})
	t.Run("no CONNECT line", func(t *testing.T) {
		g := newGuest(t, 8, 4)
		host := dial(t, g.path)
		host.Write([]byte("HELLO 52\n"))
		expectEOF(t, host)
		if used := g.drv.Take(queueRX); len(used) != 0 {
			t.Errorf("the guest got %d packets", len(used))
		}
	})
}

// Packets the guest may send but that fit no connection get a RST from
// where they were sent to, and nothing else happens; a RST gets nothing.
func TestRST(t *testing.T) {
	g := newGuest(t, 8, 4)
	for _, c := range []struct {
		name string
		h    header
	}{
		{"nothing listens on the host port", hdr(opRequest, 5000, 99)},
		{"data on no connection", hdr(opRW, 5000, 1234)},
		{"credit request on no connection", hdr(opCreditRequest, 5000, 1234)},
		{"another source CID", func() header { h := hdr(opRequest, 5000, 1234); h.SrcCID = 4; return h }()},
		{"another destination CID", func() header { h := hdr(opRequest, 5000, 1234); h.DstCID = 7; return h }()},
		{"a seqpacket", func() header { h := hdr(opRequest, 5000, 1234); h.Type = 2; return h }()},
		{"an unknown operation", hdr(99, 5000, 1234)},
	} {
		t.Run(c.name, func(t *testing.T) {
			g.t = t
			g.send(hdr(opRST, 6000, 1), nil) // answered with nothing: the RST below comes first
			g.send(c.h, nil)
			p := g.recv()
			want := c.h.reply(opRST)
			if p.header != want {
				t.Fatalf("got %+v, want %+v", p.header, want)
			}
		})
	}
	if f := g.drv.Transport().Failure(); f != "" {
		t.Errorf("device failed: %s", f)
	}
}

// The device never sends the guest more than its credit, buf_alloc less
// what it sent and the guest has not consumed (tx_cnt - fwd_cnt), and
// answers CREDIT_REQUEST with CREDIT_UPDATE.
func TestCreditToGuest(t *testing.T) {
	const alloc, total = 1000, 5000
	g := newGuest(t, 8, 4)
	ln := listen(t, g.path+"_1234")
	req := hdr(opRequest, 5000, 1234)
	req.BufAlloc = alloc
	g.send(req, nil)
	g.expect(opResponse, 1234, 5000)
	host := accept(t, ln)
	data := bytes.Repeat([]byte("0123456789"), total/10)
	host.Write(data)
	host.CloseWrite()
	// Everything the host sent waits in the device.
	awaitConn(t, g.dev, key{1234, 5000}, "the host's data", func(cn *conn) bool { return cn.hostEOF })

	var got []byte
	fwd := uint32(0)
	for len(got) < total {
		p := g.recv()
		switch p.Op {
		case opRW:
			got = append(got, p.data...)
			if uint32(len(got)) > fwd+alloc {
				t.Fatalf("%d bytes sent, the guest consumed %d of them and gave %d bytes of credit", len(got), fwd, alloc)
			}
		default:
			t.Fatalf("got op %d, want data", p.Op)
		}
		if uint32(len(got)) == fwd+alloc && len(got) < total {
			// No credit left: the device has nothing to send but
			// its own credit when asked.
			cr := hdr(opCreditRequest, 5000, 1234)
			cr.BufAlloc, cr.FwdCnt = alloc, fwd
			g.send(cr, nil)
			g.expect(opCreditUpdate, 1234, 5000)
			fwd += alloc
			cu := hdr(opCreditUpdate, 5000, 1234)
			cu.BufAlloc, cu.FwdCnt = alloc, fwd
			g.send(cu, nil)
		}
	}
	if !bytes.Equal(got, data) {
		t.Error("the guest got other bytes than the host sent")
	}
	g.expect(opShutdown, 1234, 5000)
}

// The guest's credit: the device gives each connection connBuf bytes,
// tells the guest what it has written to the host before the guest runs
// out, and resets a connection whose guest sends past its credit.
func TestCreditFromGuest(t *testing.T) {
	t.Run("updates", func(t *testing.T) {
		// The guest sends 4 times its credit, as far as its credit
		// goes each time: it stalls unless the device tells it what
		// the host program has read.
		const total = 4 * connBuf
		g := newGuest(t, 8, 4)
		ln := listen(t, g.path+"_1234")
		g.send(hdr(opRequest, 5000, 1234), nil)
		if p := g.expect(opResponse, 1234, 5000); p.BufAlloc != connBuf {
			t.Fatalf("buf_alloc %d, want %d", p.BufAlloc, connBuf)
		}
		host := accept(t, ln)
		data := make([]byte, total)
		for i := range data {
			data[i] = byte(i % 251)
		}
		read := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(io.LimitReader(host, total))
			read <- b
		}()
		sent, fwd := 0, 0
		for sent < total {
			if credit := connBuf - (sent - fwd); credit > 0 {
				n := min(credit, maxPayload, total-sent)
				g.send(hdr(opRW, 5000, 1234), data[sent:sent+n])
				sent += n
				continue
			}
			p := g.expect(opCreditUpdate, 1234, 5000)
			if p.BufAlloc != connBuf || int(p.FwdCnt) < fwd || int(p.FwdCnt) > sent {
				t.Fatalf("credit update %+v after %d bytes sent, %d known forwarded", p.header, sent, fwd)
			}
			fwd = int(p.FwdCnt)
		}
		if got := <-read; !bytes.Equal(got, data) {
			t.Errorf("host read %d bytes, not the %d the guest sent", len(got), total)
		}
	})
	t.Run("overrun", func(t *testing.T) {
		g := newGuest(t, 8, 4)
		ln := listen(t, g.path+"_1234")
		g.send(hdr(opRequest, 5000, 1234), nil)
		g.expect(opResponse, 1234, 5000)
		accept(t, ln) // and never read: the socket's buffer fills
		chunk := make([]byte, maxPayload)
		sent, fwd := 0, 0 // what the guest sent; what the device said it forwarded
		for {
			if sent > 64*connBuf {
				t.Fatalf("no RST after %d bytes", sent)
			}
			g.send(hdr(opRW, 5000, 1234), chunk)
			sent += maxPayload
			// A credit request has each step answered: an update
			// while the connection lives, else the RST.
			g.send(hdr(opCreditRequest, 5000, 1234), nil)
			p := g.recv()
			if p.Op == opCreditUpdate {
				fwd = int(p.FwdCnt)
				continue
			}
			if p.Op != opRST {
				t.Fatalf("op %d, want a credit update or RST", p.Op)
			}
			if sent <= fwd+connBuf {
				t.Fatalf("reset after %d bytes sent, %d forwarded: within the guest's credit", sent, fwd)
			}
			return
		}
	})
}

// What a broken driver puts in the queues fails the device.
func TestMalformed(t *testing.T) {
	raw := func(h header, n int) []byte {
		h.Len = uint32(n)
		b := make([]byte, hdrLen+n)
		h.put(b)
		return b
	}
	long := hdr(opRW, 5000, 1234)
	long.Len = maxPayload + 1
	for _, c := range []struct {
		name  string
		offer func(g *guest)
		want  string
	}{
		{"short header", func(g *guest) { g.drv.Offer(queueTX, [][]byte{make([]byte, 20)}) }, "shorter than its 44-byte header"},
		{"len past the buffers", func(g *guest) { g.drv.Offer(queueTX, [][]byte{raw(hdr(opRW, 5000, 1234), 10)[:hdrLen+4]}) }, "says 10 data bytes, its buffers hold 4"},
		{"len past 64 KiB", func(g *guest) {
			b := make([]byte, hdrLen)
			long.put(b)
			g.drv.Offer(queueTX, [][]byte{b, make([]byte, maxPayload+1)})
		}, "65537 data bytes, more than 65536"},
		{"TX buffer the device may write", func(g *guest) { g.drv.Offer(queueTX, [][]byte{raw(hdr(opRequest, 5000, 1234), 0)}, 8) }, "device-writable"},
		{"RX buffer shorter than a header", func(g *guest) { g.drv.Offer(queueRX, nil, 16) }, "RX buffer"},
		{"event buffer too short", func(g *guest) { g.drv.Offer(queueEvent, nil, 2) }, "event buffer"},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := newGuest(t, 0, 0)
			c.offer(g)
			if f := g.drv.Transport().Failure(); !strings.Contains(f, c.want) {
				t.Errorf("failure %q, want it to say %q", f, c.want)
			}
		})
	}
}

// While RSTs wait for RX buffers, the device takes TX packets up to
// maxRSTs of them, then leaves TX packets available until the guest takes
// RSTs: a guest cannot make it hold more.
func TestRSTsBounded(t *testing.T) {
	g := newGuest(t, 0, 4)
	bad := hdr(opRW, 5000, 1234) // on no connection
	b := make([]byte, hdrLen)
	bad.put(b)
	for i := range maxRSTs + 1 {
		g.drv.Offer(queueTX, [][]byte{b})
		used := g.drv.Take(queueTX)
		if i < maxRSTs && len(used) != 1 {
			t.Fatalf("packet %d not taken", i)
		}
		if i == maxRSTs && len(used) != 0 {
			t.Fatalf("packet %d taken with %d RSTs waiting", i, maxRSTs)
		}
	}
	n := 0
	for ; n < maxRSTs+1; n++ {
		if n < 8 {
			g.drv.Offer(queueRX, nil, hdrLen, 4096)
		}
		if p := g.recv(); p.Op != opRST {
			t.Fatalf("op %d, want RST", p.Op)
		}
	}
	if used := g.drv.Await(queueTX, wait); len(used) != 1 {
		t.Errorf("%d held TX packets taken once the RSTs went, want 1", len(used))
	}
}

// Connections are bounded: past maxConns, a guest's REQUEST gets a RST
// and a host program's connection is closed.
func TestMaxConns(t *testing.T) {
	g := newGuest(t, 8, 4)
	g.dev.mu.Lock()
	for i := range uint32(maxConns) {
		g.dev.newConn(key{local: 10000 + i, peer: 1}, stateDialing)
	}
	g.dev.mu.Unlock()
	listen(t, g.path+"_1234")
	g.send(hdr(opRequest, 5000, 1234), nil)
	g.expect(opRST, 1234, 5000)
	host := dial(t, g.path)
	host.Write([]byte("CONNECT 52\n"))
	expectEOF(t, host)
}

// Restore (of a snapshot, in a clone) takes the CID of the state, drops
// every connection and sends the guest TRANSPORT_RESET, after which the
// guest reads its CID again; the state round-trips.
func TestRestore(t *testing.T) {
	g := newGuest(t, 8, 4)
	ln := listen(t, g.path+"_1234")
	g.send(hdr(opRequest, 5000, 1234), nil)
	g.expect(opResponse, 1234, 5000)
	host := accept(t, ln)

	if err := g.dev.Restore(State{CID: 9}); err != nil {
		t.Fatal(err)
	}
	used := g.drv.Await(queueEvent, wait)
	if len(used) != 1 || !bytes.Equal(used[0].Data, []byte{0, 0, 0, 0}) {
		t.Fatalf("event queue: %+v, want one TRANSPORT_RESET (id 0)", used)
	}
	expectEOF(t, host)
	if cfg := g.drv.Config(0, 8); !bytes.Equal(cfg, []byte{9, 0, 0, 0, 0, 0, 0, 0}) {
		t.Errorf("config % x, want guest_cid 9", cfg)
	}
	// The old connection is gone: data on it gets a RST.
	h := hdr(opRW, 5000, 1234)
	h.SrcCID = 9
	g.send(h, []byte("x"))
	if p := g.recv(); p.Op != opRST || p.DstCID != 9 {
		t.Errorf("got %+v, want a RST to CID 9", p.header)
	}

	if st := devtest.RoundTrip[State](t, g.dev, g.dev); st.CID != 9 {
		t.Errorf("state %+v, want CID 9", st)
	}
	for _, cid := range []uint64{0, 2, 1<<32 - 1, 1 << 40} {
		if err := g.dev.Restore(State{CID: cid}); err == nil {
			t.Errorf("restore with CID %d: no error", cid)
		}
	}
}

// Close ends every goroutine of the device, with connections open both
// ways, a dial in progress and a host program that never said CONNECT;
// the host sockets close.
func TestClose(t *testing.T) {
	before := runtime.NumGoroutine()
	g := newGuest(t, 8, 4)
	ln := listen(t, g.path+"_1234")
	g.send(hdr(opRequest, 5000, 1234), nil)
	g.expect(opResponse, 1234, 5000)
	guestSide := accept(t, ln)

	hostSide := dial(t, g.path)
	hostSide.Write([]byte("CONNECT 52\n"))
	req := g.recv()
	g.send(hdr(opResponse, 52, req.SrcPort), nil)
	readN(t, hostSide, len(fmt.Sprintf("OK %d\n", req.SrcPort)))

	silent := dial(t, g.path)
	pending := dial(t, g.path)
	pending.Write([]byte("CONNECT 53\n")) // the guest never answers
	g.recv()

	if err := g.dev.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*net.UnixConn{guestSide, hostSide, silent, pending} {
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("host socket: %v, want the end", err)
		}
	}
	deadline := time.Now().Add(wait)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond) // nothing signals a goroutine's end
	}
}

func TestParseHeader(t *testing.T) {
	b := []byte{
		3, 0, 0, 0, 0, 0, 0, 0, // src_cid
		2, 0, 0, 0, 0, 0, 0, 0, // dst_cid
		0x88, 0x13, 0, 0, // src_port 5000
		0xd2, 0x04, 0, 0, // dst_port 1234
		4, 0, 0, 0, // len
		1, 0, // type
		5, 0, // op
		3, 0, 0, 0, // flags
		0, 0, 4, 0, // buf_alloc 256 KiB
		0x10, 0, 0, 0, // fwd_cnt
	}
	want := header{SrcCID: 3, DstCID: 2, SrcPort: 5000, DstPort: 1234, Len: 4, Type: 1, Op: 5, Flags: 3, BufAlloc: 256 << 10, FwdCnt: 16}
	h, err := parseHeader(b)
	if err != nil || h != want {
		t.Fatalf("parsed %+v, %v; want %+v", h, err, want)
	}
	again := make([]byte, hdrLen)
	h.put(again)
	if !bytes.Equal(again, b) {
		t.Errorf("encoded % x, want % x", again, b)
	}
	if _, err := parseHeader(b[:43]); !errors.Is(err, virtio.ErrMalformed) {
		t.Errorf("43 bytes: %v, want malformed", err)
	}
}

// A socket file a killed VMM left at the path is replaced; a live
// listener, or a file that is not a socket, is not.
func TestStaleSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "v")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(testCID, path, "", nil); err == nil {
		t.Fatal("New took the path of a live listener")
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // the file stays, as a killed VMM leaves it
	d, err := New(testCID, path, "", nil)
	if err != nil {
		t.Fatalf("New on a stale socket file: %v", err)
	}
	d.Close()
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, nil, 0o600)
	if _, err := New(testCID, plain, "", nil); err == nil {
		t.Error("New replaced a file that is not a socket")
	}
}
