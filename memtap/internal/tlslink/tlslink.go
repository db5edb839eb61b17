// Package tlslink carries memtap's page stream between hosts over TLS 1.3,
// authenticated by the clone family's key alone: both ends derive the
// same Ed25519 key pair from it, present its certificate, and accept only
// a peer that presents the same public key. Nobody without the family's
// key can read the pages or pose as either end, and no certificate
// authority is involved.
//
// memtap's client and server drive their sockets with raw, blocking or
// polled, system calls (a fault's round trip must not wait on Go's
// scheduler). Pipe keeps that: it returns one end of a socket pair that
// carries the stream in the clear, and two goroutines relay it through
// the TLS connection.
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

// relayBuffer is what one relay copies at a time: a page reply of a
// whole window is up to 1 MiB.
const relayBuffer = 256 << 10

// Pipe relays c (a TLS connection whose handshake is done) to a new
// socket pair and returns the pair's other end, a blocking descriptor
// that the caller owns and closes. c is closed when either side ends; a
// write to c that takes longer than writeTimeout ends it too.
func Pipe(c net.Conn, writeTimeout time.Duration) (int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	for _, fd := range fds {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	f := os.NewFile(uintptr(fds[1]), "memtap tls relay")
	pc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[0])
		return -1, err
	}
	// Network to caller: at the network's end, the caller reads EOF.
	go func() {
		io.CopyBuffer(pc, c, make([]byte, relayBuffer))
		pc.(*net.UnixConn).CloseWrite()
	}()
	// Caller to network: at the caller's end (or a stuck network
	// write), both sides close.
	go func() {
		io.CopyBuffer(deadlineWriter{c, writeTimeout}, pc, make([]byte, relayBuffer))
		c.Close()
		pc.Close()
	}()
	return fds[0], nil
}

// deadlineWriter bounds each write to c.
type deadlineWriter struct {
	c net.Conn
	d time.Duration
}

func (w deadlineWriter) Write(b []byte) (int, error) {
	w.c.SetWriteDeadline(time.Now().Add(w.d))
	return w.c.Write(b)
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
