package cluster_test

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/cluster"
	"github.com/sfvmm/sfvmm/cluster/agentapi"
	"github.com/sfvmm/sfvmm/cluster/clustertest"
	"github.com/sfvmm/sfvmm/cluster/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func testCluster(t *testing.T, names ...string) (*cluster.Embedded, string) {
	return clustertest.Etcd(t, names...)
}

func connect(t *testing.T, e *cluster.Embedded, dir, name string) *cluster.Store {
	t.Helper()
	id, err := pki.LoadIdentity(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := cluster.Connect([]string{e.Endpoint}, id, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func join(t *testing.T, s *cluster.Store, h cluster.Host) *cluster.Session {
	t.Helper()
	ss, err := s.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Join(ss, h); err != nil {
		t.Fatal(err)
	}
	return ss
}

func hostNames(hs []cluster.Host) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Name)
	}
	return out
}

func TestReserveAcrossHosts(t *testing.T) {
	e, dir := testCluster(t, "h0", "h1", "h2", "h3", "p")
	var sessions []*cluster.Session
	for _, n := range []string{"h0", "h1", "h2", "h3"} {
		sessions = append(sessions, join(t, connect(t, e, dir, n), cluster.Host{Name: n, Agent: "127.0.0.1:1", Slots: 2}))
	}
	s := connect(t, e, dir, "p")
	if err := s.Join(sessions[0], cluster.Host{Name: "h0", Slots: 9}); err == nil || !strings.Contains(err.Error(), "another agent") {
		t.Errorf("second agent named h0: %v", err)
	}
	fam, err := s.NewFamily("f1", "h0")
	if err != nil {
		t.Fatal(err)
	}
	got, err := fam.Reserve(1, 8, agentapi.Spread)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"h0", "h1", "h2", "h3", "h0", "h1", "h2", "h3"}; !reflect.DeepEqual(hostNames(got), want) {
		t.Errorf("8 slots spread over 4 hosts of 2: %v, want %v", hostNames(got), want)
	}
	if _, err := fam.Reserve(2, 1, agentapi.Spread); err != cluster.ErrNoSlots {
		t.Errorf("a full cluster: %v, want ErrNoSlots", err)
	}
	if n, _ := s.Reserved(context.Background(), "h2", "f1", 1); n != 2 {
		t.Errorf("h2 holds %d of ticket 1's slots, want 2", n)
	}
	if err := fam.Release(1); err != nil {
		t.Fatal(err)
	}
	got, err = fam.Reserve(3, 3, agentapi.Pack)
	if err != nil || len(got) != 3 || got[0].Name != got[1].Name {
		t.Errorf("pack 3 after release: %v, %v", hostNames(got), err)
	}

	// A second family takes what is left (m ≤ n); the first family's end
	// returns its slots.
	fam2, err := s.NewFamily("f2", "h1")
	if err != nil {
		t.Fatal(err)
	}
	got, err = fam2.Reserve(1, 8, agentapi.Spread)
	if err != nil || len(got) != 5 {
		t.Fatalf("second family: %d slots, %v; want the 5 left", len(got), err)
	}
	gone := s.WatchFamily(context.Background(), "f1")
	fam.Close()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("family f1 closed, but its watch did not end")
	}
	fam2.Release(1)
	if got, err = fam2.Reserve(2, 8, agentapi.Spread); err != nil || len(got) != 8 {
		t.Errorf("after both released: %d slots, %v", len(got), err)
	}

	// A host whose agent's lease ends leaves, and its slots with it.
	fam2.Release(2)
	sessions[3].Close()
	hosts, err := s.Hosts(context.Background())
	if err != nil || len(hosts) != 3 {
		t.Errorf("after h3's lease ended: hosts %v, %v", hostNames(hosts), err)
	}
	if got, _ = fam2.Reserve(3, 8, agentapi.Spread); len(got) != 6 {
		t.Errorf("without h3: %d slots, want 6", len(got))
	}
}

// A store's leases, its agent's and its families', have the TTL it was
// given; one outside what etcd can keep is refused.
func TestLeaseTTL(t *testing.T) {
	e, dir := testCluster(t, "h0")
	s := connect(t, e, dir, "h0")
	for _, bad := range []int{-1, 0, 1, 3601} {
		if err := s.SetLeaseTTL(bad); err == nil {
			t.Errorf("lease TTL %d s taken", bad)
		}
	}
	if err := s.SetLeaseTTL(7); err != nil {
		t.Fatal(err)
	}
	join(t, s, cluster.Host{Name: "h0", Agent: "127.0.0.1:1", Slots: 1})
	fam, err := s.NewFamily("f", "h0")
	if err != nil {
		t.Fatal(err)
	}
	defer fam.Close()
	id, err := pki.LoadIdentity(dir, "h0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second, TLS: id.ClientTLS(""), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	leases, err := c.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases.Leases) != 2 {
		t.Fatalf("%d leases, want the agent's and the family's", len(leases.Leases))
	}
	for _, l := range leases.Leases {
		r, err := c.TimeToLive(ctx, l.ID)
		if err != nil {
			t.Fatal(err)
		}
		if r.GrantedTTL != 7 {
			t.Errorf("lease %x granted %d s, want 7", l.ID, r.GrantedTTL)
		}
	}
}

// A client without a certificate of the cluster's CA is refused by etcd.
func TestEtcdRefusesStrangers(t *testing.T) {
	e, _ := testCluster(t)
	stranger := t.TempDir()
	if err := pki.InitCA(stranger); err != nil {
		t.Fatal(err)
	}
	if err := pki.Issue(stranger, "x", nil); err != nil {
		t.Fatal(err)
	}
	other, err := pki.LoadIdentity(stranger, "x")
	if err != nil {
		t.Fatal(err)
	}
	// Trust the server's CA, but present another CA's certificate.
	cfg := other.ClientTLS("")
	cfg.InsecureSkipVerify = true
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 2 * time.Second, TLS: cfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := c.Get(ctx, "/sfvmm/hosts/"); err == nil {
		t.Fatal("etcd answered a client with another CA's certificate")
	}
	if _, err := cluster.Connect([]string{e.Endpoint}, other, 3*time.Second); err == nil {
		t.Fatal("Connect with another CA's certificate succeeded")
	}
}
