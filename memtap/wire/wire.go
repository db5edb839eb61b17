// Package wire is the memtap page protocol between a child's memtap and
// the parent's memory server over a stream socket (TCP or Unix): the
// authenticated handshake, page requests and page replies. It encodes and
// decodes messages and checks them; it does no I/O of its own beyond
// reading whole messages from an io.Reader.
//
// A connection goes:
//
//	server → client  Hello    magic "SFMH", version, region page counts, server nonce
//	client → server  Auth     magic "SFMA", client nonce, HMAC-SHA256(key, "client" ‖ server nonce ‖ client nonce)
//	server → client  Welcome  magic "SFMW", status, HMAC-SHA256(key, "server" ‖ client nonce ‖ server nonce),
//	                          the family's multicast group (IPv4 address and port; zero if none)
//	client → server  Request  magic "SFMQ", region, first page, page count, tag, flags (any number, pipelined)
//	server → client  Response magic "SFMR", the request's fields, status,
//	                          then Count flag bytes (PageData, PageZero, PageAbsent, PageMulticast),
//	                          then one 4 KiB page for each PageData flag, in order
//	server → client  Alive    a Response header with StatusAlive, every
//	                          AliveInterval, whatever else is sent
//
// Replies come in request order, except to a Report (RequestReport), which
// has none. A keep-alive says the server is there and
// how many of this client's requests it has answered (in First), so that a
// client can tell a server that is gone or stopped (it hears nothing) from
// one that is slow (it hears keep-alives and the count moves) and from one
// that is stuck (it hears keep-alives and the count does not move).
//
// Both sides prove they hold the clone family's key without sending it; a
// client that fails is refused and the connection closed. The pages
// themselves are not MACed here: between hosts the stream is TLS keyed by
// the family key (memtap/internal/tlslink), and on the parent's own host
// it is a Unix socket. With multicast (mcdist, memtap/internal/mcdist) a
// reply may say a page went to the family's group instead (PageMulticast):
// every clone installs it from there, and a clone that missed it asks
// again with RequestUnicast. All integers are little-endian.
//
// It is not the transport (memtap and memtap/server own their sockets) and
// not the multicast protocol.
package wire

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Protocol constants.
const (
	Version  = 3
	PageSize = 4096
	// AliveInterval is how often the server sends a keep-alive.
	AliveInterval = time.Second
	// MaxBatch bounds the pages of one request, and so the size of a
	// reply (1 MiB of data).
	MaxBatch = 256
	// MaxRegions bounds the RAM regions of an image.
	MaxRegions = 64
	// MaxRegionPages bounds one region: 1 TiB of 4 KiB pages.
	MaxRegionPages = 1 << 28
)

// Message sizes on the wire.
const (
	helloFixed    = 4 + 2 + 2 + 4 + 32 // then 8 bytes per region
	AuthSize      = 4 + 32 + 32
	WelcomeSize   = 4 + 4 + 32 + 4 + 2 + 2
	RequestSize   = 4 + 4 + 8 + 4 + 4 + 4
	ResponseSize  = 4 + 4 + 8 + 4 + 4 + 4 // header; flags and pages follow
	MaxHelloSize  = helloFixed + 8*MaxRegions
	magicHello    = "SFMH"
	magicAuth     = "SFMA"
	magicWelcome  = "SFMW"
	magicRequest  = "SFMQ"
	magicResponse = "SFMR"
)

// Page flags in a response.
const (
	PageData   = 1 // the page follows
	PageZero   = 2 // the page was all zero at the fork: nothing follows
	PageAbsent = 3 // the parent never populated the page: nothing follows
	// PageMulticast: the page went to the family's multicast group;
	// nothing follows.
	PageMulticast = 4
)

// Request flags.
const (
	// RequestUnicast asks for the pages on this stream, never by
	// multicast: the client missed them there.
	RequestUnicast = 1 << 0
	// RequestReport is no request but a report: First is how many
	// multicast pages the client received in the last ReportInterval
	// (the server paces multicast to its clients' receive rates). It has
	// no reply; Region and Tag are 0 and Count is 1.
	RequestReport = 1 << 1
)

// ReportInterval is how often a multicast client reports its receive
// rate.
const ReportInterval = 250 * time.Millisecond

// Response status codes.
const (
	StatusOK         = 0
	StatusBadRequest = 1 // out of range or malformed; the server closes the connection
	StatusAlive      = 2 // a keep-alive: Count 0, nothing follows, First the requests answered
)

// Welcome status codes.
const (
	WelcomeOK      = 0
	WelcomeRefused = 1
)

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed memtap message")

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
}

// Key is a clone family's shared secret. The VMM makes one per fork and
// carries it to the children in the descriptor.
type Key [32]byte

// NewKey returns a random key.
func NewKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("new memtap key: %w", err)
	}
	return k, nil
}

// Nonce is a handshake challenge.
type Nonce [32]byte

// NewNonce returns a random nonce.
func NewNonce() (Nonce, error) {
	var n Nonce
	_, err := rand.Read(n[:])
	return n, err
}

func mac(k Key, role string, a, b Nonce) [32]byte {
	h := hmac.New(sha256.New, k[:])
	h.Write([]byte("sfvmm memtap v1 " + role))
	h.Write(a[:])
	h.Write(b[:])
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// ClientMAC is the proof a client sends for the server's challenge.
func ClientMAC(k Key, server, client Nonce) [32]byte { return mac(k, "client", server, client) }

// ServerMAC is the proof the server sends back for the client's challenge.
func ServerMAC(k Key, server, client Nonce) [32]byte { return mac(k, "server", client, server) }

// Hello opens a connection: the image's shape and the server's challenge.
type Hello struct {
	Nonce   Nonce
	Regions []uint64 // page count of each RAM region
}

// Encode returns the message bytes.
func (h Hello) Encode() []byte {
	b := make([]byte, 0, helloFixed+8*len(h.Regions))
	b = append(b, magicHello...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(h.Regions)))
	b = binary.LittleEndian.AppendUint32(b, PageSize)
	b = append(b, h.Nonce[:]...)
	for _, n := range h.Regions {
		b = binary.LittleEndian.AppendUint64(b, n)
	}
	return b
}

// DecodeHello decodes b, which must be exactly one Hello.
func DecodeHello(b []byte) (Hello, error) {
	var h Hello
	if len(b) < helloFixed {
		return h, malformed("hello of %d bytes", len(b))
	}
	if string(b[:4]) != magicHello {
		return h, malformed("hello magic %q", b[:4])
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != Version {
		return h, malformed("protocol version %d, want %d", v, Version)
	}
	n := int(binary.LittleEndian.Uint16(b[6:]))
	if n == 0 || n > MaxRegions {
		return h, malformed("%d regions", n)
	}
	if ps := binary.LittleEndian.Uint32(b[8:]); ps != PageSize {
		return h, malformed("page size %d", ps)
	}
	if len(b) != helloFixed+8*n {
		return h, malformed("hello of %d bytes for %d regions", len(b), n)
	}
	copy(h.Nonce[:], b[12:44])
	for i := range n {
		p := binary.LittleEndian.Uint64(b[helloFixed+8*i:])
		if p == 0 || p > MaxRegionPages {
			return h, malformed("region %d of %d pages", i, p)
		}
		h.Regions = append(h.Regions, p)
	}
	return h, nil
}

// ReadHello reads one Hello from r.
func ReadHello(r io.Reader) (Hello, error) {
	b := make([]byte, helloFixed, MaxHelloSize)
	if _, err := io.ReadFull(r, b); err != nil {
		return Hello{}, fmt.Errorf("read hello: %w", err)
	}
	n := int(binary.LittleEndian.Uint16(b[6:]))
	if n > MaxRegions {
		return Hello{}, malformed("%d regions", n)
	}
	b = b[:helloFixed+8*n]
	if _, err := io.ReadFull(r, b[helloFixed:]); err != nil {
		return Hello{}, fmt.Errorf("read hello: %w", err)
	}
	return DecodeHello(b)
}

// Auth is the client's answer to Hello.
type Auth struct {
	Nonce Nonce    // the client's challenge to the server
	MAC   [32]byte // ClientMAC
}

// Encode returns the message bytes.
func (a Auth) Encode() []byte {
	b := append([]byte(magicAuth), a.Nonce[:]...)
	return append(b, a.MAC[:]...)
}

// DecodeAuth decodes b, which must be exactly one Auth.
func DecodeAuth(b []byte) (Auth, error) {
	var a Auth
	if len(b) != AuthSize || string(b[:4]) != magicAuth {
		return a, malformed("auth message")
	}
	copy(a.Nonce[:], b[4:36])
	copy(a.MAC[:], b[36:68])
	return a, nil
}

// Welcome is the server's verdict on Auth.
type Welcome struct {
	Status uint32   // WelcomeOK or WelcomeRefused
	MAC    [32]byte // ServerMAC when Status is WelcomeOK, else zero
	// Group and Port are the family's multicast group, which the client
	// joins, or zero: no multicast.
	Group [4]byte
	Port  uint16
}

// Encode returns the message bytes.
func (w Welcome) Encode() []byte {
	b := binary.LittleEndian.AppendUint32([]byte(magicWelcome), w.Status)
	b = append(b, w.MAC[:]...)
	b = append(b, w.Group[:]...)
	b = binary.LittleEndian.AppendUint16(b, w.Port)
	return append(b, 0, 0)
}

// DecodeWelcome decodes b, which must be exactly one Welcome.
func DecodeWelcome(b []byte) (Welcome, error) {
	var w Welcome
	if len(b) != WelcomeSize || string(b[:4]) != magicWelcome {
		return w, malformed("welcome message")
	}
	w.Status = binary.LittleEndian.Uint32(b[4:])
	if w.Status != WelcomeOK && w.Status != WelcomeRefused {
		return w, malformed("welcome status %d", w.Status)
	}
	copy(w.MAC[:], b[8:40])
	copy(w.Group[:], b[40:44])
	w.Port = binary.LittleEndian.Uint16(b[44:])
	if (w.Group == [4]byte{}) != (w.Port == 0) || w.Group != [4]byte{} && w.Group[0]&0xf0 != 0xe0 {
		return w, malformed("multicast group %v port %d", w.Group, w.Port)
	}
	if b[46] != 0 || b[47] != 0 {
		return w, malformed("welcome padding %#x %#x, want zero", b[46], b[47])
	}
	return w, nil
}

// Request asks for Count pages of a region from First on.
type Request struct {
	Region uint32
	First  uint64
	Count  uint32
	Tag    uint32 // chosen by the client, echoed in the response
	Flags  uint32 // RequestUnicast, RequestReport
}

// Append appends the message bytes to b.
func (q Request) Append(b []byte) []byte {
	b = append(b, magicRequest...)
	b = binary.LittleEndian.AppendUint32(b, q.Region)
	b = binary.LittleEndian.AppendUint64(b, q.First)
	b = binary.LittleEndian.AppendUint32(b, q.Count)
	b = binary.LittleEndian.AppendUint32(b, q.Tag)
	return binary.LittleEndian.AppendUint32(b, q.Flags)
}

// DecodeRequest decodes b, which must be exactly one Request. It checks the
// form only; Check checks the range against an image.
func DecodeRequest(b []byte) (Request, error) {
	var q Request
	if len(b) != RequestSize {
		return q, malformed("request of %d bytes", len(b))
	}
	if string(b[:4]) != magicRequest {
		return q, malformed("request magic %q", b[:4])
	}
	q.Region = binary.LittleEndian.Uint32(b[4:])
	q.First = binary.LittleEndian.Uint64(b[8:])
	q.Count = binary.LittleEndian.Uint32(b[16:])
	q.Tag = binary.LittleEndian.Uint32(b[20:])
	q.Flags = binary.LittleEndian.Uint32(b[24:])
	switch {
	case q.Flags&^(RequestUnicast|RequestReport) != 0 || q.Flags == RequestUnicast|RequestReport:
		return q, malformed("request flags %#x", q.Flags)
	case q.Flags == RequestReport && (q.Region != 0 || q.Count != 1 || q.Tag != 0):
		return q, malformed("report with fields set: %+v", q)
	case q.Count == 0 || q.Count > MaxBatch:
		return q, malformed("request for %d pages", q.Count)
	}
	return q, nil
}

// Report is a receive-rate report: received multicast pages in the last
// ReportInterval.
func Report(received uint64) Request {
	return Request{First: received, Count: 1, Flags: RequestReport}
}

// Check reports whether q lies inside an image of regions (page counts).
func (q Request) Check(regions []uint64) error {
	if q.Flags&RequestReport != 0 {
		return nil
	}
	if int64(q.Region) >= int64(len(regions)) {
		return fmt.Errorf("region %d of %d", q.Region, len(regions))
	}
	n := regions[q.Region]
	if q.First >= n || uint64(q.Count) > n-q.First {
		return fmt.Errorf("pages [%d, +%d) outside region %d of %d pages", q.First, q.Count, q.Region, n)
	}
	return nil
}

// Response heads the reply to a Request.
type Response struct {
	Region uint32
	First  uint64
	Count  uint32
	Tag    uint32
	Status uint32 // StatusOK: Count flags and the data pages follow
}

// Append appends the header bytes to b.
func (r Response) Append(b []byte) []byte {
	b = append(b, magicResponse...)
	b = binary.LittleEndian.AppendUint32(b, r.Region)
	b = binary.LittleEndian.AppendUint64(b, r.First)
	b = binary.LittleEndian.AppendUint32(b, r.Count)
	b = binary.LittleEndian.AppendUint32(b, r.Tag)
	return binary.LittleEndian.AppendUint32(b, r.Status)
}

// DecodeResponse decodes a response header, exactly ResponseSize bytes.
func DecodeResponse(b []byte) (Response, error) {
	var r Response
	if len(b) != ResponseSize {
		return r, malformed("response header of %d bytes", len(b))
	}
	if string(b[:4]) != magicResponse {
		return r, malformed("response magic %q", b[:4])
	}
	r.Region = binary.LittleEndian.Uint32(b[4:])
	r.First = binary.LittleEndian.Uint64(b[8:])
	r.Count = binary.LittleEndian.Uint32(b[16:])
	r.Tag = binary.LittleEndian.Uint32(b[20:])
	r.Status = binary.LittleEndian.Uint32(b[24:])
	switch {
	case r.Status != StatusOK && r.Status != StatusBadRequest && r.Status != StatusAlive:
		return r, malformed("response status %d", r.Status)
	case r.Status == StatusOK && (r.Count == 0 || r.Count > MaxBatch):
		return r, malformed("response of %d pages", r.Count)
	case r.Status == StatusAlive && (r.Count != 0 || r.Region != 0 || r.Tag != 0):
		return r, malformed("keep-alive with fields set: %+v", r)
	}
	return r, nil
}

// Alive is a keep-alive saying the server has answered answered requests
// of this client.
func Alive(answered uint64) Response { return Response{Status: StatusAlive, First: answered} }

// DataPages checks the flags of a response and counts the PageData ones,
// the pages that follow.
func DataPages(flags []byte) (int, error) {
	n := 0
	for i, f := range flags {
		switch f {
		case PageData:
			n++
		case PageZero, PageAbsent, PageMulticast:
		default:
			return 0, malformed("page %d has flag %d", i, f)
		}
	}
	return n, nil
}
