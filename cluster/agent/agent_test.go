package agent

import (
	"bytes"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/cluster"
	"github.com/sfvmm/sfvmm/cluster/agentapi"
	"github.com/sfvmm/sfvmm/cluster/clustertest"
	"github.com/sfvmm/sfvmm/cluster/pki"
)

// The agent's logic is tested with the real etcd, TLS and HTTP, and a fake
// clone: this test binary, which acts on its "descriptor" (a word) instead
// of restoring a VM. Real clones run in the sandbox (tests/cluster_test.go).
func TestMain(m *testing.M) {
	if os.Getenv("SFVMM_FAKE_CLONE") != "" {
		os.Exit(fakeClone(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func fakeClone(args []string) int {
	fs := flag.NewFlagSet("clone", flag.ContinueOnError)
	desc := fs.String("descriptor", "", "")
	id := fs.Uint("id", 0, "")
	fs.Uint("ticket", 0, "")
	host := fs.String("host", "", "")
	fs.Bool("direct-reads", true, "")
	fs.String("log-level", "", "")
	if len(args) == 0 || args[0] != "clone" || fs.Parse(args[1:]) != nil {
		return 2
	}
	b, err := os.ReadFile(*desc)
	if err != nil {
		return 2
	}
	fmt.Printf("[clone %d on %s] %s\n", *id, *host, b)
	fmt.Fprintf(os.Stderr, "sfvmm clone %d: log line\n", *id)
	switch w := string(b); {
	case w == "sleep":
		time.Sleep(time.Minute)
	case strings.HasPrefix(w, "exit "):
		n, _ := strconv.Atoi(w[5:])
		return n
	}
	return 0
}

// testCluster is an embedded etcd and one agent per name, each with slots
// slots, all on loopback; and a parent's launcher joined through the
// first agent.
type testCluster struct {
	dir    string
	agents []*Agent
	l      *agentapi.Launcher
	mu     sync.Mutex
	out    bytes.Buffer
}

func (c *testCluster) console(line []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out.Write(line)
	return nil
}

func (c *testCluster) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

func newTestCluster(t *testing.T, slots int, names ...string) *testCluster {
	t.Helper()
	t.Setenv("SFVMM_FAKE_CLONE", "1")
	e, dir := clustertest.Etcd(t, append([]string{"parent"}, names...)...)
	c := &testCluster{dir: dir}
	exe, _ := os.Executable()
	var hosts []agentapi.Host
	for _, n := range names {
		id, err := pki.LoadIdentity(c.dir, n)
		if err != nil {
			t.Fatal(err)
		}
		store, err := cluster.Connect([]string{e.Endpoint}, id, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		ss, err := store.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		h := cluster.Host{Name: n, Agent: ln.Addr().String(), Slots: slots}
		if err := store.Join(ss, h); err != nil {
			t.Fatal(err)
		}
		a := New(Config{Host: h, Store: store, Identity: id, Exe: exe, Dir: t.TempDir(), Log: slog.New(slog.DiscardHandler)})
		go a.Serve(ln)
		t.Cleanup(func() { a.Close(); ss.Close(); store.Close() })
		c.agents = append(c.agents, a)
		hosts = append(hosts, h)
	}
	// The parent presents its own member certificate, and its host's
	// agent's name for that agent's.
	pid, _ := pki.LoadIdentity(c.dir, "parent")
	var err error
	c.l, err = agentapi.Join(agentapi.Config{Agent: hosts[0], Identity: pid, Placement: agentapi.Spread, Console: c.console})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.l.Close)
	return c
}

// descriptor writes what a fake clone is to do.
func descriptor(t *testing.T, what string) string {
	p := filepath.Join(t.TempDir(), "d")
	if err := os.WriteFile(p, []byte(what), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLaunchAcrossAgents(t *testing.T) {
	c := newTestCluster(t, 2, "a", "b")
	n, err := c.l.Reserve(1, 3)
	if err != nil || n != 3 {
		t.Fatalf("reserve 3: %d, %v", n, err)
	}
	for id, want := range map[uint32]string{1: "a", 2: "b", 3: "a"} {
		if h, _ := c.l.Host(1, id); h.Name != want {
			t.Errorf("clone %d on %s, want %s", id, h.Name, want)
		}
	}
	ok, err := c.l.Launch(descriptor(t, "hello"), 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	bad, err := c.l.Launch(descriptor(t, "exit 3"), 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := ok.Wait(); err != nil {
		t.Errorf("clone 1: %v", err)
	}
	if err := bad.Wait(); err == nil || !strings.Contains(err.Error(), "on b: clone process") || !strings.Contains(err.Error(), "status 3") {
		t.Errorf("clone 2: %v, want its exit status 3 on b", err)
	}
	if out := c.output(); !strings.Contains(out, "[clone 1 on a] hello\n") {
		t.Errorf("console: %q", out)
	}
	// A clone past the ticket's slots on a host is refused by its agent.
	if _, err := c.l.Launch(descriptor(t, "hello"), 1, 4); err == nil {
		t.Error("clone 4 of a 3-slot ticket launched")
	}
	c.l.Release(1)
	if n, err := c.l.Reserve(2, 9); err != nil || n != 4 {
		t.Errorf("after release, reserve 9 of 4: %d, %v", n, err)
	}
}

func waitIdle(t *testing.T, a *Agent, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for a.Running() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("agent %s still runs %d clones after %v", a.cfg.Host.Name, a.Running(), within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestKillAndLoss(t *testing.T) {
	c := newTestCluster(t, 2, "a", "b")
	if n, err := c.l.Reserve(1, 4); err != nil || n != 4 {
		t.Fatalf("reserve: %d, %v", n, err)
	}
	var clones [4]interface {
		Wait() error
		Kill() error
	}
	for i := range clones {
		cl, err := c.l.Launch(descriptor(t, "sleep"), 1, uint32(i+1))
		if err != nil {
			t.Fatal(err)
		}
		clones[i] = cl
	}
	// sf_kill: the clone's request ends and its agent kills it.
	start := time.Now()
	clones[0].Kill()
	if err := clones[0].Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("killed clone: %v", err)
	}
	// An agent that goes (here: closed) loses its clones: the parent
	// hears at once, and its host's processes end.
	c.agents[1].Close()
	for _, i := range []int{1, 3} {
		if err := clones[i].Wait(); err == nil || !strings.Contains(err.Error(), "agent b") {
			t.Errorf("clone %d on a closed agent: %v", i+1, err)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("kill and agent loss took %v", d)
	}
	waitIdle(t, c.agents[1], 10*time.Second)
	// The family's end (the parent's VMM gone): every agent kills its
	// clones, through etcd.
	c.l.Close()
	if err := clones[2].Wait(); err == nil {
		t.Error("a clone outlived its family")
	}
	waitIdle(t, c.agents[0], 10*time.Second)
}

// A parent with another CA's certificate is refused.
func TestAgentRefusesStrangers(t *testing.T) {
	c := newTestCluster(t, 1, "a")
	other := t.TempDir()
	pki.InitCA(other)
	pki.Issue(other, "parent", nil)
	id, err := pki.LoadIdentity(other, "parent")
	if err != nil {
		t.Fatal(err)
	}
	_, err = agentapi.Join(agentapi.Config{Agent: agentapi.Host{Name: "a", Agent: c.agents[0].cfg.Host.Agent}, Identity: id, Placement: agentapi.Spread})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a stranger joined: %v", err)
	}
}
