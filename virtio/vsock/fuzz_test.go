package vsock

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/sfvmm/sfvmm/virtio"
)

// fuzzConn is the connection FuzzPacket opens before the fuzzer's packets.
var fuzzConn = key{local: 1234, peer: 5000}

// socketPair is a connected pair of Unix stream sockets.
func socketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = c.(*net.UnixConn)
	}
	return cs[0], cs[1]
}

// FuzzPacket gives the device the fuzzer's packets: each step takes a
// control byte, then for a TX packet two length bytes and that many bytes
// of packet (addressed, when the control byte says so, to a connection
// that is open with host data waiting), else an RX or event buffer.
// Nothing panics, every error is ErrNotNow or malformed, no RX packet
// carries more data than the guest's credit, and the bounds hold.
func FuzzPacket(f *testing.F) {
	pkt := func(op uint16, flags, bufAlloc, fwd uint32, data string) []byte {
		h := header{SrcCID: testCID, DstCID: HostCID, SrcPort: fuzzConn.peer, DstPort: fuzzConn.local, Type: typeStream,
			Op: op, Flags: flags, BufAlloc: bufAlloc, FwdCnt: fwd, Len: uint32(len(data))}
		b := make([]byte, hdrLen)
		h.put(b)
		b = append(b, data...)
		return append([]byte{0x10, byte(len(b)), byte(len(b) >> 8)}, b...)
	}
	rx := []byte{0x02, 0x40}
	f.Add(bytes.Join([][]byte{pkt(opCreditUpdate, 0, 3000, 0, ""), rx, rx, pkt(opRW, 0, 3000, 100, "hello"), rx,
		pkt(opCreditRequest, 0, 3000, 100, ""), rx, pkt(opShutdown, shutRcv|shutSend, 0, 0, ""), rx, {0x03}}, nil))
	f.Add(pkt(opRequest, 0, 0, 0, "")[3:]) // a bare packet: the parser's
	f.Add(bytes.Join([][]byte{pkt(opRequest, 0, 1<<16, 0, ""), pkt(opRST, 0, 0, 0, ""), rx, {0x07}}, nil))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, in []byte) {
		if h, err := parseHeader(in); err == nil {
			b := make([]byte, hdrLen)
			h.put(b)
			if !bytes.Equal(b, in[:hdrLen]) {
				t.Fatalf("header % x encodes back as % x", in[:hdrLen], b)
			}
		} else if !errors.Is(err, virtio.ErrMalformed) {
			t.Fatal(err)
		}

		d := newDevice(testCID, filepath.Join(dir, "v"), nil)
		defer d.Close()
		ours, theirs := socketPair(t)
		defer theirs.Close()
		d.mu.Lock()
		cn := d.newConn(fuzzConn, stateOpen)
		cn.sock, cn.toGuest, cn.peerBuf = ours, make([]byte, 100<<10), 2000
		d.socks[ours] = true
		d.schedule(cn)
		d.mu.Unlock()

		check := func(q int, err error) {
			if err != nil && !errors.Is(err, virtio.ErrNotNow) && !errors.Is(err, virtio.ErrMalformed) {
				t.Fatalf("queue %d: %v", q, err)
			}
		}
		for len(in) > 0 {
			ctl := in[0]
			in = in[1:]
			switch ctl & 3 {
			case 0, 1: // a TX packet, in two buffers split where ctl says
				if len(in) < 2 {
					return
				}
				n := min(int(binary.LittleEndian.Uint16(in)), len(in)-2)
				p := bytes.Clone(in[2 : 2+n])
				in = in[2+n:]
				if ctl&0x10 != 0 && len(p) >= hdrLen {
					// To the open connection.
					binary.LittleEndian.PutUint64(p, testCID)
					binary.LittleEndian.PutUint64(p[8:], HostCID)
					binary.LittleEndian.PutUint32(p[16:], fuzzConn.peer)
					binary.LittleEndian.PutUint32(p[20:], fuzzConn.local)
					binary.LittleEndian.PutUint16(p[28:], typeStream)
				}
				split := int(ctl>>5) * len(p) / 7
				_, err := d.Handle(queueTX, virtio.Chain{Readable: [][]byte{p[:split], p[split:]}})
				check(queueTX, err)
			case 2: // an RX buffer of the size the next byte says
				size := 0
				if len(in) > 0 {
					size, in = int(in[0])*64, in[1:]
				}
				buf := make([]byte, size)
				d.mu.Lock()
				credit := cn.credit()
				d.mu.Unlock()
				w, err := d.Handle(queueRX, virtio.Chain{Writable: [][]byte{buf[:min(size, 20)], buf[min(size, 20):]}})
				check(queueRX, err)
				if err != nil {
					continue
				}
				h, err := parseHeader(buf)
				if err != nil || int(w) != hdrLen+int(h.Len) || int(w) > size {
					t.Fatalf("RX packet %+v, %d bytes written into %d: %v", h, w, size, err)
				}
				if h.Op == opRW && h.DstPort == fuzzConn.peer && int(h.Len) > credit {
					t.Fatalf("%d bytes sent with %d bytes of credit", h.Len, credit)
				}
			case 3: // an event buffer, or a transport reset
				if ctl&4 != 0 {
					d.TransportReset()
					continue
				}
				_, err := d.Handle(queueEvent, virtio.Chain{Writable: [][]byte{make([]byte, ctl>>3)}})
				check(queueEvent, err)
			}
			d.mu.Lock()
			conns, rsts, toHost, ready := len(d.conns), len(d.rsts), len(cn.toHost), len(d.ready)
			d.mu.Unlock()
			if conns > maxConns || rsts >= maxRSTs+maxConns || toHost > connBuf || ready > conns {
				t.Fatalf("bounds: %d connections, %d RSTs, %d bytes for the host, %d ready", conns, rsts, toHost, ready)
			}
		}
	})
}
