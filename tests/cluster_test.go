//go:build kvm

package tests

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sfvmm/sfvmm/vmm/vmtest"
)

// agentPort is where the sandbox hosts' agents serve; etcd, embedded in
// host0's, serves on 2379.
const agentPort = "7070"

// sandboxCluster is a cluster of the sandbox's hosts (kvmbox --hosts N):
// certificates for each, an agent on each with slots slots, host0's
// holding the embedded etcd.
type sandboxCluster struct {
	tls    string
	names  []string
	addrs  []string
	agents []*proc
}

func startCluster(t *testing.T, n, slots int) *sandboxCluster {
	t.Helper()
	names, addrs := sandboxHosts(t)
	if len(names) < n {
		t.Fatalf("need %d sandbox hosts (kvmbox --hosts %d), have %d", n, n, len(names))
	}
	c := &sandboxCluster{tls: t.TempDir(), names: names[:n], addrs: addrs[:n]}
	sfvmm := sfvmmPath(t)
	if out, code := run(t, time.Minute, sfvmm, "ca", "init", "--dir", c.tls); code != 0 {
		t.Fatalf("sfvmm ca init: %s", out)
	}
	for i, name := range c.names {
		if out, code := run(t, time.Minute, sfvmm, "ca", "issue", "--dir", c.tls, "--name", name, "--ip", c.addrs[i]); code != 0 {
			t.Fatalf("sfvmm ca issue: %s", out)
		}
	}
	etcdDir := t.TempDir()
	for i := range c.names {
		args := []string{"netns", "exec", c.names[i], sfvmm, "agent", "--name", c.names[i], "--cluster-tls", c.tls,
			"--listen", c.agentAddr(i), "--slots", fmt.Sprint(slots)}
		if i == 0 {
			args = append(args, "--etcd-embedded", etcdDir)
		} else {
			args = append(args, "--etcd", "https://"+net.JoinHostPort(c.addrs[0], "2379"))
		}
		p := start(t, "ip", args...)
		p.waitFor(t, "agent "+c.names[i]+" serving", 2*time.Minute)
		c.agents = append(c.agents, p)
	}
	return c
}

func (c *sandboxCluster) agentAddr(i int) string { return net.JoinHostPort(c.addrs[i], agentPort) }

// parent starts sfvmm run on host i with the cluster's flags and args.
func (c *sandboxCluster) parent(t *testing.T, i int, args ...string) *proc {
	t.Helper()
	full := append([]string{"netns", "exec", c.names[i], sfvmmPath(t), "run", "--agent", c.agentAddr(i),
		"--cluster-tls", c.tls, "--cluster-name", c.names[i]}, args...)
	return start(t, "ip", full...)
}

// clonesByHost counts the clones whose console line matching what names
// each host: "[clone K on HOST] ...".
func clonesByHost(out, what string) map[string][]string {
	re := regexp.MustCompile(`\[clone (\d+) on (host\d+)\] ` + what)
	by := map[string][]string{}
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		by[m[2]] = append(by[m[2]], m[1])
	}
	return by
}

// The forktest kernel forks 8 clones, 2 per host on 4 hosts: each checks
// the pre-fork pattern, fetched over the network from the parent's memory
// server, while the parent overwrites it; the parent joins them.
func TestForkAcrossHosts(t *testing.T) {
	c := startCluster(t, 4, 2)
	p := c.parent(t, 0, "--kernel", vmtest.Kernel(t, "forktest"), "--memory", "128M", "--cmdline", "mode=fork clones=8 size=16M")
	out, sum := forkDone(t, p, 5*time.Minute, 16<<20)
	by := clonesByHost(out, `forktest: clone \d+: pattern ok, checksum `+regexp.QuoteMeta(sum))
	for _, h := range c.names {
		if len(by[h]) != 2 {
			t.Errorf("%s ran clones %v with the pattern intact, want 2", h, by[h])
		}
	}
	for id := 1; id <= 8; id++ {
		if want := fmt.Sprintf("sfvmm clone %d: guest ended: sf_exit status 0", id); !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	if want := "forktest: parent joined: all 8 clones exited, 0 without sf_exit(0)"; !strings.Contains(out, want) {
		t.Errorf("missing %q", want)
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
		for i, a := range c.agents {
			t.Logf("agent %s:\n%s", c.names[i], a.Output())
		}
	}
}
