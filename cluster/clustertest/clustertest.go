// Package clustertest starts a real embedded etcd on loopback for tests,
// with a cluster CA and member certificates.
package clustertest

import (
	"net"
	"strconv"
	"testing"

	"github.com/sfvmm/sfvmm/cluster"
	"github.com/sfvmm/sfvmm/cluster/pki"
)

// Etcd starts an embedded etcd and returns its endpoint and the folder of
// the cluster's certificates: its own ("etcd") and one per name.
func Etcd(t testing.TB, names ...string) (*cluster.Embedded, string) {
	t.Helper()
	dir := t.TempDir()
	if err := pki.InitCA(dir); err != nil {
		t.Fatal(err)
	}
	for _, n := range append([]string{"etcd"}, names...) {
		if err := pki.Issue(dir, n, nil); err != nil {
			t.Fatal(err)
		}
	}
	id, err := pki.LoadIdentity(dir, "etcd")
	if err != nil {
		t.Fatal(err)
	}
	e, err := cluster.StartEmbedded(t.TempDir(), net.IPv4(127, 0, 0, 1), portPair(t), id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e, dir
}

// portPair returns a free loopback port p with p+1 free too (etcd's client
// and peer ports).
func portPair(t testing.TB) int {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
		l.Close()
		if err == nil {
			l2.Close()
			return p
		}
	}
	t.Fatal("no two free loopback ports in a row")
	return 0
}
