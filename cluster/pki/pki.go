// Package pki makes and loads an sfvmm cluster's certificates: one CA, and
// one certificate per member (an agent and its host's parents, etcd),
// used both to serve and as a client under mutual TLS 1.3.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// A cluster's certificates live in one folder: the CA (ca.pem, ca-key.pem)
// and one certificate per member (NAME.pem, NAME-key.pem), good both for
// serving and as a client: agents, parents and etcd use the same ones.
// Members know each other by name, which is each certificate's DNS name.
const (
	caCert = "ca.pem"
	caKey  = "ca-key.pem"
)

// validNames are what a member may be called: a DNS label, which is also a
// safe file name and etcd key segment.
var validName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// CheckName says why name cannot name a member, or nil.
func CheckName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("name %q: must be 1 to 63 lower-case letters, digits and inner dashes", name)
	}
	return nil
}

// InitCA creates a cluster CA in dir, which must not hold one yet.
func InitCA(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, caKey)); err == nil {
		return fmt.Errorf("%s already holds a cluster CA", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "sfvmm cluster CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	return writePair(dir, caCert, caKey, der, key)
}

// Issue makes member name's certificate, signed by dir's CA, for the given
// addresses (an agent's and etcd's listening IPs) besides its name.
func Issue(dir, name string, ips []net.IP) error {
	if err := CheckName(name); err != nil {
		return err
	}
	ca, err := tls.LoadX509KeyPair(filepath.Join(dir, caCert), filepath.Join(dir, caKey))
	if err != nil {
		return fmt.Errorf("cluster CA in %s: %w", dir, err)
	}
	caX, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		IPAddresses:  append([]net.IP{net.IPv4(127, 0, 0, 1)}, ips...),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(5, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caX, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return err
	}
	return writePair(dir, name+".pem", name+"-key.pem", der, key)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func writePair(dir, certName, keyName string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, keyName), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, certName), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// Identity is one member's credentials: its certificate and the CA that
// every member it talks to must be signed by.
type Identity struct {
	Name     string
	Dir      string
	cert     tls.Certificate
	roots    *x509.CertPool
	CertFile string
	KeyFile  string
	CAFile   string
}

// LoadIdentity reads member name's credentials from dir.
func LoadIdentity(dir, name string) (*Identity, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	id := &Identity{Name: name, Dir: dir,
		CertFile: filepath.Join(dir, name+".pem"), KeyFile: filepath.Join(dir, name+"-key.pem"), CAFile: filepath.Join(dir, caCert)}
	var err error
	if id.cert, err = tls.LoadX509KeyPair(id.CertFile, id.KeyFile); err != nil {
		return nil, fmt.Errorf("member %q's certificate (sfvmm ca issue makes it): %w", name, err)
	}
	pemCA, err := os.ReadFile(id.CAFile)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	id.roots = x509.NewCertPool()
	if !id.roots.AppendCertsFromPEM(pemCA) {
		return nil, errors.New(id.CAFile + ": no certificate in it")
	}
	return id, nil
}

// ServerTLS accepts only clients with a certificate of the cluster's CA.
func (id *Identity) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		ClientCAs:    id.roots,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
}

// ClientTLS talks to member server (its name), proving this member's own.
func (id *Identity) ClientTLS(server string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		RootCAs:      id.roots,
		ServerName:   server,
	}
}
