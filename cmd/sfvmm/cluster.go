package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/sfvmm/sfvmm/cluster/agentapi"
	"github.com/sfvmm/sfvmm/cluster/pki"
	"github.com/sfvmm/sfvmm/vmm"
)

// clusterFlags put a VM's clones on the hosts of a cluster, through this
// host's agent.
type clusterFlags struct {
	agent, tlsDir, name, serve, placement, pages *string
}

func addClusterFlags(fs *flag.FlagSet) clusterFlags {
	return clusterFlags{
		agent:     fs.String("agent", "", "IP:PORT of this host's sfvmm agent: clones run on the hosts of its cluster instead of as this process's children"),
		tlsDir:    fs.String("cluster-tls", "", "with --agent: the cluster's certificate folder (sfvmm ca)"),
		name:      fs.String("cluster-name", "", "with --agent: this host's member name, whose certificate the folder holds (the agent's)"),
		serve:     fs.String("serve-address", "", "with --agent: IP:PORT at which clones reach this VM's memory server (default: the agent's IP, any port)"),
		placement: fs.String("placement", "spread", "with --agent: spread a ticket's clones over hosts, or pack them onto few"),
		pages:     fs.String("pages", "multicast", "with --agent: how clones on other hosts get pages: multicast (one reply, sent to the family's group, installed by every clone that lacks it; a clone whose network drops multicast falls back to unicast) or unicast (a TLS stream per clone)"),
	}
}

// join makes the VM a clone family of the cluster when --agent is set; nil
// otherwise. The launcher's Close ends the family.
func (f clusterFlags) join(c *console, log logger) (*agentapi.Launcher, string, error) {
	if *f.agent == "" {
		return nil, "", nil
	}
	if *f.pages != "multicast" && *f.pages != "unicast" {
		return nil, "", fmt.Errorf("--pages %q: want multicast or unicast", *f.pages)
	}
	if *f.tlsDir == "" || *f.name == "" {
		return nil, "", fmt.Errorf("--agent needs --cluster-tls and --cluster-name")
	}
	p, err := agentapi.ParsePlacement(*f.placement)
	if err != nil {
		return nil, "", fmt.Errorf("--placement: %w", err)
	}
	ip, _, err := net.SplitHostPort(*f.agent)
	if err != nil {
		return nil, "", fmt.Errorf("--agent: %w", err)
	}
	serve := *f.serve
	if serve == "" {
		serve = net.JoinHostPort(ip, "0")
	}
	id, err := pki.LoadIdentity(*f.tlsDir, *f.name)
	if err != nil {
		return nil, "", fmt.Errorf("--cluster-tls: %w", err)
	}
	l, err := agentapi.Join(agentapi.Config{Agent: agentapi.Host{Name: *f.name, Agent: *f.agent}, Identity: id, Placement: p,
		Console: c.writeLine, Stderr: os.Stderr, Log: log.Logger})
	if err != nil {
		return nil, "", fmt.Errorf("--agent: %w", err)
	}
	return l, serve, nil
}

// caCmd implements `sfvmm ca init|issue`: the cluster's certificates.
func caCmd(args []string) int {
	log := newLogger("sfvmm ca: ")
	if len(args) == 0 || (args[0] != "init" && args[0] != "issue") {
		log.Errorf("usage: sfvmm ca init --dir DIR | sfvmm ca issue --dir DIR --name NAME [--ip IP,...]")
		return 2
	}
	fs := flag.NewFlagSet("sfvmm ca "+args[0], flag.ContinueOnError)
	dir := fs.String("dir", "", "the cluster's certificate folder (required)")
	name := fs.String("name", "", "issue: the member's name (a host's, by convention)")
	ips := fs.String("ip", "", "issue: the member's IP addresses, comma-separated (where its agent and etcd listen)")
	if err := fs.Parse(args[1:]); err != nil {
		return usageStatus(err)
	}
	if *dir == "" || fs.NArg() > 0 {
		log.Errorf("--dir is required")
		return 2
	}
	if args[0] == "init" {
		if err := pki.InitCA(*dir); err != nil {
			log.Errorf("%v", err)
			return vmm.StatusError
		}
		fmt.Printf("cluster CA in %s\n", *dir)
		return 0
	}
	var addrs []net.IP
	if *ips != "" {
		for _, s := range strings.Split(*ips, ",") {
			ip := net.ParseIP(s)
			if ip == nil {
				log.Errorf("--ip %q: not an IP address", s)
				return 2
			}
			addrs = append(addrs, ip)
		}
	}
	if err := pki.Issue(*dir, *name, addrs); err != nil {
		log.Errorf("%v", err)
		return vmm.StatusError
	}
	fmt.Printf("certificate of %s in %s\n", *name, *dir)
	return 0
}

// agentCmd implements `sfvmm agent` by running sfvmm-agent, which sits
// beside this binary: the agent links etcd (client and server), whose
// package initialisation would otherwise add about 13 ms to every exec of
// sfvmm, and every clone and memtap helper is one.
func agentCmd(args []string) int {
	exe, err := os.Executable()
	if err == nil {
		agent := filepath.Join(filepath.Dir(exe), "sfvmm-agent")
		err = syscall.Exec(agent, append([]string{agent}, args...), os.Environ())
		err = fmt.Errorf("run %s: %w", agent, err)
	}
	fmt.Fprintf(os.Stderr, "sfvmm agent: %v\n", err)
	return vmm.StatusError
}

// cloneLabel is a clone's console prefix: its ID, and its host when an
// agent runs it.
func cloneLabel(id uint, host string) string {
	if host == "" {
		return "[clone " + strconv.FormatUint(uint64(id), 10) + "] "
	}
	return "[clone " + strconv.FormatUint(uint64(id), 10) + " on " + host + "] "
}
