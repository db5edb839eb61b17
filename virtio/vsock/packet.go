package vsock

import (
	"encoding/binary"

	"github.com/sfvmm/sfvmm/virtio"
)

// hdrLen is the size of struct virtio_vsock_hdr (virtio 1.2, 5.10.6),
// which starts every packet.
const hdrLen = 44

// Packet types and operations (virtio 1.2, 5.10.6).
const (
	typeStream = 1

	opRequest       = 1
	opResponse      = 2
	opRST           = 3
	opShutdown      = 4
	opRW            = 5
	opCreditUpdate  = 6
	opCreditRequest = 7
)

// Shutdown flags: the sender will receive (shutRcv) or send (shutSend)
// nothing more.
const (
	shutRcv  = 1
	shutSend = 2
)

// maxPayload bounds a packet's data: Linux sends at most 64 KiB
// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); a longer len is a broken driver.
const maxPayload = 64 << 10

// header is struct virtio_vsock_hdr.
type header struct {
	SrcCID, DstCID   uint64
	SrcPort, DstPort uint32
	Len              uint32 // payload bytes after the header
	Type, Op         uint16
	Flags            uint32
	BufAlloc, FwdCnt uint32 // the sender's credit (5.10.6.3)
}

// parseHeader decodes the header at the start of b, which must hold one.
func parseHeader(b []byte) (header, error) {
	if len(b) < hdrLen {
		return header{}, virtio.Malformed("vsock packet of %d bytes, shorter than its %d-byte header", len(b), hdrLen)
	}
	le := binary.LittleEndian
	return header{
		SrcCID: le.Uint64(b), DstCID: le.Uint64(b[8:]),
		SrcPort: le.Uint32(b[16:]), DstPort: le.Uint32(b[20:]),
		Len:  le.Uint32(b[24:]),
		Type: le.Uint16(b[28:]), Op: le.Uint16(b[30:]),
		Flags:    le.Uint32(b[32:]),
		BufAlloc: le.Uint32(b[36:]), FwdCnt: le.Uint32(b[40:]),
	}, nil
}

// put encodes h into b[:hdrLen].
func (h header) put(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b, h.SrcCID)
	le.PutUint64(b[8:], h.DstCID)
	le.PutUint32(b[16:], h.SrcPort)
	le.PutUint32(b[20:], h.DstPort)
	le.PutUint32(b[24:], h.Len)
	le.PutUint16(b[28:], h.Type)
	le.PutUint16(b[30:], h.Op)
	le.PutUint32(b[32:], h.Flags)
	le.PutUint32(b[36:], h.BufAlloc)
	le.PutUint32(b[40:], h.FwdCnt)
}

// reply is the header of a packet that answers h: its addresses swapped,
// its type kept (as Linux answers).
func (h header) reply(op uint16) header {
	return header{SrcCID: h.DstCID, DstCID: h.SrcCID, SrcPort: h.DstPort, DstPort: h.SrcPort, Type: h.Type, Op: op}
}

// readPacket takes the packet a TX chain holds: its header, and its
// payload as slices of guest RAM. The header and payload may be spread
// over any of the chain's buffers (Linux 6.1 puts each in its own).
func readPacket(c virtio.Chain) (header, [][]byte, error) {
	if len(c.Writable) != 0 {
		return header{}, nil, virtio.Malformed("vsock TX packet with a device-writable buffer")
	}
	var b [hdrLen]byte
	n := 0
	for _, s := range span(c.Readable, 0, hdrLen) {
		n += copy(b[n:], s)
	}
	h, err := parseHeader(b[:n])
	if err != nil {
		return header{}, nil, err
	}
	switch data := c.ReadableLen() - hdrLen; {
	case h.Len > maxPayload:
		return header{}, nil, virtio.Malformed("vsock packet of %d data bytes, more than %d", h.Len, maxPayload)
	case int(h.Len) > data:
		return header{}, nil, virtio.Malformed("vsock packet says %d data bytes, its buffers hold %d", h.Len, data)
	}
	return h, span(c.Readable, hdrLen, int(h.Len)), nil
}

// writePacket puts header h and payload into an RX chain, which has room
// for them, and returns the bytes written.
func writePacket(c virtio.Chain, h header, payload []byte) uint32 {
	h.Len = uint32(len(payload))
	var b [hdrLen]byte
	h.put(b[:])
	n := 0
	for _, s := range span(c.Writable, 0, hdrLen) {
		n += copy(s, b[n:])
	}
	n = 0
	for _, s := range span(c.Writable, hdrLen, len(payload)) {
		n += copy(s, payload[n:])
	}
	return uint32(hdrLen + len(payload))
}

// span is bytes [off, off+n) of bufs taken end to end, as slices of them;
// shorter where bufs end first.
func span(bufs [][]byte, off, n int) [][]byte {
	var out [][]byte
	for _, b := range bufs {
		if n == 0 {
			break
		}
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:min(len(b), off+n)]
		off = 0
		n -= len(b)
		out = append(out, b)
	}
	return out
}
