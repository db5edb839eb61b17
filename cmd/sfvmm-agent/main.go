// Command sfvmm-agent is `sfvmm agent`: a host's agent in an sfvmm cluster
// (package cluster/agent), and with --etcd-embedded the cluster's etcd as
// well. It is a binary of its own so that etcd stays off the start path
// of every VMM, clone and memtap helper, which are the sfvmm binary.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/sfvmm/sfvmm/cluster"
	"github.com/sfvmm/sfvmm/cluster/agent"
	"github.com/sfvmm/sfvmm/cluster/pki"
)

// Exit statuses, as sfvmm's.
const (
	statusError = 1
	statusUsage = 2
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
	workDir := fs.String("work-dir", "", "folder for running clones' descriptors (default: a temporary one)")
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
	if *name == "" || *tlsDir == "" || *listen == "" || fs.NArg() > 0 || (*etcd == "") == (*embedded == "") {
		return fail(statusUsage, "usage: sfvmm agent --name NAME --cluster-tls DIR --listen IP:PORT [--slots N] (--etcd URLS | --etcd-embedded DIR)")
	}
	if *slots < 0 {
		return fail(statusUsage, "--slots %d: must be 0 or more", *slots)
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
	store, err := cluster.Connect(strings.Split(endpoints, ","), id)
	if err != nil {
		return fail(statusError, "%v", err)
	}
	defer store.Close()
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
	status := 0
	select {
	case s := <-sig:
		log.Info(fmt.Sprintf("%v: stopping; this host's clones end", s))
	case err := <-served:
		status = fail(statusError, "serve: %v", err)
	case <-session.Done():
		status = fail(statusError, "lost the cluster: this host's lease ended; its clones end")
	case err := <-embErr:
		status = fail(statusError, "embedded etcd: %v", err)
	}
	a.Close()
	return status
}
