// Command sfvmm-agent is `sfvmm agent`: a host's agent in an sfvmm cluster
// (package cluster/agent), and with --etcd-embedded the cluster's etcd as
// well. It is a binary of its own so that etcd stays off the start path
// of every VMM, clone and memtap helper, which are the sfvmm binary.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sfvmm/sfvmm/cluster"
	"github.com/sfvmm/sfvmm/cluster/agent"
	"github.com/sfvmm/sfvmm/cluster/pki"
)

// Exit statuses, as sfvmm's.
const (
	statusError = 1
	statusUsage = 2
)

// How long an agent waits for etcd's first answer, and after how long it
// says it is waiting; how long --status waits for each answer.
const (
	etcdWait   = time.Minute
	etcdSlow   = 5 * time.Second
	statusWait = 10 * time.Second
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("sfvmm agent", flag.ContinueOnError)
	name := fs.String("name", "", "this host's member name in the cluster (required)")
	tlsDir := fs.String("cluster-tls", "", "the cluster's certificate folder, with NAME's certificate (required)")
	listen := fs.String("listen", "", "IP:PORT to serve parents and launches on (required)")
	slots := fs.Int("slots", 4, "clones this host runs at once")
	etcd := fs.String("etcd", "", "etcd endpoints of the cluster (https://host:port,...)")
	embedded := fs.String("etcd-embedded", "", "run the cluster's etcd inside this agent, with its data in this folder")
	etcdPort := fs.Int("etcd-port", cluster.EmbeddedPort, "with --etcd-embedded: its client port on the --listen IP (the peer port is the next)")
	leaseTTL := fs.Int("lease-ttl", cluster.LeaseTTL, "seconds a silent host stays in the cluster: its clones, and those of its forking VMs, are killed this long after its last renewal")
	workDir := fs.String("work-dir", "", "folder for running clones' descriptors (default: a temporary one)")
	status := fs.Bool("status", false, "print the cluster's hosts and slot reservations (with --etcd) and exit")
	level := fs.String("log-level", "info", "least severe of the agent's and its clones' messages to print: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return statusUsage
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "sfvmm agent: --log-level: %v\n", err)
		return statusUsage
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv})).With("agent", *name)
	fail := func(status int, format string, a ...any) int {
		log.Error(fmt.Sprintf(format, a...))
		return status
	}
	if *status {
		if *name == "" || *tlsDir == "" || *etcd == "" || fs.NArg() > 0 {
			return fail(statusUsage, "usage: sfvmm agent --status --name NAME --cluster-tls DIR --etcd URLS")
		}
		return printStatus(*name, *tlsDir, *etcd, log)
	}
	if *name == "" || *tlsDir == "" || *listen == "" || fs.NArg() > 0 || (*etcd == "") == (*embedded == "") {
		return fail(statusUsage, "usage: sfvmm agent --name NAME --cluster-tls DIR --listen IP:PORT [--slots N] (--etcd URLS | --etcd-embedded DIR)")
	}
	if *slots < 0 {
		return fail(statusUsage, "--slots %d: must be 0 or more", *slots)
	}
	if err := cluster.CheckLeaseTTL(*leaseTTL); err != nil {
		return fail(statusUsage, "--lease-ttl: %v", err)
	}
	id, err := pki.LoadIdentity(*tlsDir, *name)
	if err != nil {
		return fail(statusError, "--cluster-tls: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fail(statusError, "find the sfvmm binary: %v", err)
	}
	// Clones are the VMM's work: the sfvmm binary beside this one.
	exe = filepath.Join(filepath.Dir(exe), "sfvmm")
	if _, err := os.Stat(exe); err != nil {
		return fail(statusError, "the sfvmm binary that runs clones: %v", err)
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fail(statusError, "--listen: %v", err)
	}
	endpoints := *etcd
	var embErr <-chan error
	if *embedded != "" {
		emb, err := cluster.StartEmbedded(*embedded, l.Addr().(*net.TCPAddr).IP, *etcdPort, id)
		if err != nil {
			return fail(statusError, "%v", err)
		}
		defer emb.Close()
		endpoints, embErr = emb.Endpoint, emb.Err()
		log.Info("etcd serving at " + emb.Endpoint)
	}
	// An agent may start with its cluster's etcd, or on a host too busy
	// for etcd to answer at once (a nested sandbox's embedded etcd took
	// over 5 s once): it waits, and says so.
	slow := time.AfterFunc(etcdSlow, func() {
		log.Warn(fmt.Sprintf("no answer from etcd at %s yet; waiting up to %v in all", endpoints, etcdWait))
	})
	store, err := cluster.Connect(strings.Split(endpoints, ","), id, etcdWait)
	slow.Stop()
	if err != nil {
		return fail(statusError, "%v", err)
	}
	defer store.Close()
	if err := store.SetLeaseTTL(*leaseTTL); err != nil {
		return fail(statusError, "--lease-ttl: %v", err)
	}
	session, err := store.NewSession()
	if err != nil {
		return fail(statusError, "%v", err)
	}
	defer session.Close()
	host := cluster.Host{Name: *name, Agent: l.Addr().String(), Slots: *slots}
	if err := store.Join(session, host); err != nil {
		return fail(statusError, "%v", err)
	}
	dir := *workDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "sfvmm-agent-"); err != nil {
			return fail(statusError, "%v", err)
		}
		defer os.RemoveAll(dir)
	}
	a := agent.New(agent.Config{Host: host, Store: store, Identity: id, Exe: exe, Dir: dir,
		CloneArgs: []string{"--log-level", *level}, Log: log})
	served := make(chan error, 1)
	go func() { served <- a.Serve(l) }()
	// The line scripts and tests wait for.
	fmt.Printf("agent %s serving at %s with %d slots\n", *name, l.Addr(), *slots)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	code := 0
	select {
	case s := <-sig:
		log.Info(fmt.Sprintf("%v: stopping; this host's clones end", s))
	case err := <-served:
		code = fail(statusError, "serve: %v", err)
	case <-session.Done():
		code = fail(statusError, "lost the cluster: this host's lease ended; its clones end")
	case err := <-embErr:
		code = fail(statusError, "embedded etcd: %v", err)
	}
	a.Close()
	return code
}

// printStatus prints the cluster's hosts and reservations, one per line:
//
//	host NAME AGENT-ADDRESS SLOTS
//	reserved HOST FAMILY TICKET SLOTS
func printStatus(name, tlsDir, etcd string, log *slog.Logger) int {
	id, err := pki.LoadIdentity(tlsDir, name)
	if err != nil {
		log.Error(fmt.Sprintf("--cluster-tls: %v", err))
		return statusError
	}
	store, err := cluster.Connect(strings.Split(etcd, ","), id, statusWait)
	if err != nil {
		log.Error(err.Error())
		return statusError
	}
	defer store.Close()
	ctx, cancel := context.WithTimeout(context.Background(), statusWait)
	defer cancel()
	hosts, err := store.Hosts(ctx)
	if err != nil {
		log.Error(err.Error())
		return statusError
	}
	res, err := store.Reservations(ctx)
	if err != nil {
		log.Error(err.Error())
		return statusError
	}
	for _, h := range hosts {
		fmt.Printf("host %s %s %d\n", h.Name, h.Agent, h.Slots)
	}
	for _, r := range res {
		fmt.Printf("reserved %s %s %d %d\n", r.Host, r.Family, r.Ticket, r.Slots)
	}
	return 0
}
