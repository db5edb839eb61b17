package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A CA issues certificates that verify for their member's name and
// addresses, as server and as client; its key stays private.
func TestIssue(t *testing.T) {
	dir := t.TempDir()
	if err := InitCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := InitCA(dir); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Errorf("a second CA in the same folder: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, caKey)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("CA key: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	ip := net.ParseIP("10.0.0.7")
	if err := Issue(dir, "host7", []net.IP{ip}); err != nil {
		t.Fatal(err)
	}
	id, err := LoadIdentity(dir, "host7")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(id.cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, opts := range []x509.VerifyOptions{
		{Roots: id.roots, DNSName: "host7", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		{Roots: id.roots, DNSName: "10.0.0.7", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		{Roots: id.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
	} {
		if _, err := leaf.Verify(opts); err != nil {
			t.Errorf("verify for %q: %v", opts.DNSName, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: id.roots, DNSName: "host8"}); err == nil {
		t.Error("host7's certificate verifies for host8")
	}
	if c := id.ServerTLS(); c.MinVersion != tls.VersionTLS13 || c.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("server TLS: min version %#x, client auth %v", c.MinVersion, c.ClientAuth)
	}
}

// Bad names and missing files are refused with a message naming them.
func TestRefusals(t *testing.T) {
	dir := t.TempDir()
	if err := Issue(dir, "host1", nil); err == nil || !strings.Contains(err.Error(), "cluster CA in") {
		t.Errorf("issue without a CA: %v", err)
	}
	if err := InitCA(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "Host1", "-a", "a-", "a/b", strings.Repeat("a", 64)} {
		if err := Issue(dir, name, nil); err == nil {
			t.Errorf("issued a certificate for %q", name)
		}
	}
	if _, err := LoadIdentity(dir, "nobody"); err == nil || !strings.Contains(err.Error(), "sfvmm ca issue") {
		t.Errorf("identity of a member never issued: %v", err)
	}
}
