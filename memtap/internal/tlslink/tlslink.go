// Package tlslink carries memtap's page stream between hosts over TLS 1.3,
// authenticated by the clone family's key alone: both ends derive the
// same Ed25519 key pair from it, present its certificate, and accept only
// a peer that presents the same public key. Nobody without the family's
// key can read the pages or pose as either end, and no certificate
// authority is involved.
//
// memtap's client and server drive their sockets with raw, blocking or
// polled, system calls (a fault's round trip must not wait on Go's
// scheduler). Conn keeps that: crypto/tls runs over the descriptor itself,
// on the thread that reads or writes.
package tlslink

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// identity is the family's derived key pair and certificate.
func identity(key [32]byte) (tls.Certificate, ed25519.PublicKey, error) {
	seed, err := hkdf.Key(sha256.New, key[:], nil, "sfvmm memtap tls identity", ed25519.SeedSize)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "sfvmm clone family"},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, pub, priv)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, pub, nil
}

// Config is the TLS configuration of one end of a family's page stream.
func Config(key [32]byte, server bool) (*tls.Config, error) {
	cert, pub, err := identity(key)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// The peer is checked against the family's key below, not
		// against a CA or a host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("peer presented no certificate")
			}
			if p, ok := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey); !ok || !p.Equal(pub) {
				return errors.New("peer does not hold the clone family's key")
			}
			return nil
		},
		SessionTicketsDisabled: true,
	}
	if server {
		cfg.ClientAuth = tls.RequireAnyClientCert
	}
	return cfg, nil
}

// Conn is a TLS stream on a socket descriptor that memtap drives with
// plain system calls: its Read and Write run the record layer on the
// calling thread, with no goroutine between the socket and the caller.
type Conn struct {
	*tls.Conn
	raw *fdConn
}

// Client starts the client's side of TLS on fd, a connected blocking
// socket that stays the caller's to close; local and remote name its
// ends. The handshake runs on the first Read or Write.
func Client(fd int, local, remote net.Addr, cfg *tls.Config) *Conn {
	raw := &fdConn{fd: fd, local: local, remote: remote}
	return &Conn{Conn: tls.Client(raw, cfg), raw: raw}
}

// Server is Client's counterpart.
func Server(fd int, local, remote net.Addr, cfg *tls.Config) *Conn {
	raw := &fdConn{fd: fd, local: local, remote: remote}
	return &Conn{Conn: tls.Server(raw, cfg), raw: raw}
}

// SetNonblock puts the descriptor in non-blocking mode, for a caller that
// polls it: Read then fails with an error that is unix.EAGAIN when no whole
// record has come, and Write never blocks: what the socket does not take
// waits in the Conn until Flush.
func (c *Conn) SetNonblock() error {
	c.raw.mu.Lock()
	defer c.raw.mu.Unlock()
	c.raw.nonblock = true
	return unix.SetNonblock(c.raw.fd, true)
}

// Flush sends what earlier writes left waiting; unix.EAGAIN if the socket
// still does not take all of it.
func (c *Conn) Flush() error {
	c.raw.mu.Lock()
	defer c.raw.mu.Unlock()
	return c.raw.flush()
}

// Pending reports whether bytes wait for Flush.
func (c *Conn) Pending() bool {
	c.raw.mu.Lock()
	defer c.raw.mu.Unlock()
	return len(c.raw.pending) > 0
}

// errAgain is a non-blocking descriptor's "nothing now": temporary to
// crypto/tls, which then keeps a partial record for the next Read.
type errAgain struct{}

func (errAgain) Error() string   { return "resource temporarily unavailable" }
func (errAgain) Timeout() bool   { return true }
func (errAgain) Temporary() bool { return true }
func (errAgain) Unwrap() error   { return unix.EAGAIN }

// fdConn is a net.Conn on a raw socket descriptor. Deadlines are the
// socket's SO_RCVTIMEO and SO_SNDTIMEO, which blocking system calls obey.
type fdConn struct {
	fd            int
	local, remote net.Addr

	mu       sync.Mutex // guards nonblock and pending, and orders writes
	nonblock bool
	pending  []byte
}

func (c *fdConn) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(c.fd, b)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			if c.isNonblock() {
				return 0, errAgain{}
			}
			return 0, os.ErrDeadlineExceeded
		case err != nil:
			return 0, err
		case n == 0 && len(b) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

func (c *fdConn) isNonblock() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nonblock
}

// Write writes all of b on a blocking descriptor. On a non-blocking one it
// writes what the socket takes and keeps the rest, after anything already
// kept, for flush: a TLS record is never left half written.
func (c *fdConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.nonblock {
		for done := 0; done < len(b); {
			n, err := unix.Write(c.fd, b[done:])
			switch {
			case errors.Is(err, unix.EINTR):
				continue
			case errors.Is(err, unix.EAGAIN):
				return done, os.ErrDeadlineExceeded
			case err != nil:
				return done, err
			}
			done += n
		}
		return len(b), nil
	}
	c.pending = append(c.pending, b...)
	if err := c.flush(); err != nil && !errors.Is(err, unix.EAGAIN) {
		return 0, err
	}
	return len(b), nil
}

func (c *fdConn) flush() error {
	for len(c.pending) > 0 {
		n, err := unix.Write(c.fd, c.pending)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return err
		}
		c.pending = c.pending[n:]
	}
	c.pending = c.pending[:0]
	return nil
}

// Close shuts the stream down, which wakes a reader blocked on it; the
// descriptor is its owner's to close.
func (c *fdConn) Close() error { return unix.Shutdown(c.fd, unix.SHUT_RDWR) }

func (c *fdConn) LocalAddr() net.Addr  { return c.local }
func (c *fdConn) RemoteAddr() net.Addr { return c.remote }

func (c *fdConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

func (c *fdConn) SetReadDeadline(t time.Time) error  { return c.timeout(unix.SO_RCVTIMEO, t) }
func (c *fdConn) SetWriteDeadline(t time.Time) error { return c.timeout(unix.SO_SNDTIMEO, t) }

func (c *fdConn) timeout(opt int, t time.Time) error {
	var d time.Duration
	if !t.IsZero() {
		d = max(time.Until(t), time.Microsecond) // zero would mean none
	}
	tv := unix.NsecToTimeval(d.Nanoseconds())
	return unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, opt, &tv)
}

// Dial connects to a memory server as memtap's client does: over TLS
// keyed by key when network is "tcp". For tests and tools that speak the
// wire protocol themselves.
func Dial(network, addr string, key [32]byte) (net.Conn, error) {
	c, err := net.Dial(network, addr)
	if err != nil || network != "tcp" {
		return c, err
	}
	cfg, err := Config(key, false)
	if err != nil {
		c.Close()
		return nil, err
	}
	return tls.Client(c, cfg), nil
}
