// Package agent is sfvmm's host agent (SnowFlock's SFLD): it runs clones
// on its host for the forking parents of its cluster, holds the clone
// families of its host's parents in the cluster's etcd, and reserves
// slots for them. Package agentapi describes what it serves.
package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/sfvmm/sfvmm/cluster"
	"github.com/sfvmm/sfvmm/cluster/agentapi"
	"github.com/sfvmm/sfvmm/cluster/pki"
)

// Config configures an agent.
type Config struct {
	// Host is this agent's host as the cluster knows it.
	Host     cluster.Host
	Store    *cluster.Store
	Identity *pki.Identity
	// Exe is the sfvmm binary that runs clones (`sfvmm clone`).
	Exe string
	// Dir holds the descriptors of running clones.
	Dir string
	// CloneArgs are added to every clone's command line (logging flags).
	CloneArgs []string
	Log       *slog.Logger
}

// Agent runs clones for the cluster's parents.
type Agent struct {
	cfg     Config
	ctx     context.Context // ends with Close: every clone is killed
	cancel  context.CancelFunc
	mu      sync.Mutex
	running map[string]int // family/ticket → clones running here
	// families are the clone families made through this agent, whose
	// leases it holds for their parents.
	families map[string]*cluster.Family
	clones   sync.WaitGroup
	srv      *http.Server
}

// New returns an agent; Serve starts it.
func New(cfg Config) *Agent {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{cfg: cfg, ctx: ctx, cancel: cancel, running: map[string]int{}, families: map[string]*cluster.Family{}}
	mux := http.NewServeMux()
	mux.HandleFunc(agentapi.LaunchPath, a.launch)
	mux.HandleFunc(agentapi.FamilyPath, a.family)
	mux.HandleFunc(agentapi.ReservePath, a.reserve)
	mux.HandleFunc(agentapi.ReleasePath, a.release)
	a.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// HTTP/1.1 only: one connection per clone, whose end (the
		// parent's process gone) the server sees at once.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     slog.NewLogLogger(cfg.Log.Handler(), slog.LevelDebug),
	}
	return a
}

// Serve accepts launches on l (TLS is added here) until Close.
func (a *Agent) Serve(l net.Listener) error {
	err := a.srv.Serve(tls.NewListener(l, a.cfg.Identity.ServerTLS()))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close kills every clone of this agent and waits for them to end.
func (a *Agent) Close() error {
	a.cancel()
	err := a.srv.Close()
	a.clones.Wait()
	return err
}

// Running says how many clones run here.
func (a *Agent) Running() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, k := range a.running {
		n += k
	}
	return n
}

// decode reads a POSTed JSON request of at most limit bytes into q and
// checks it; it answers the error itself and returns false.
func decode(w http.ResponseWriter, r *http.Request, limit int64, q interface{ Check() error }) bool {
	if r.Method != http.MethodPost {
		http.Error(w, r.URL.Path+": POST only", http.StatusMethodNotAllowed)
		return false
	}
	err := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit)).Decode(q)
	if err == nil {
		err = q.Check()
	}
	if err != nil {
		http.Error(w, r.URL.Path+": "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

type familyRequest struct{}

func (familyRequest) Check() error { return nil }

// family makes a clone family for the parent that asks, and holds its
// lease while the request lasts.
func (a *Agent) family(w http.ResponseWriter, r *http.Request) {
	if !decode(w, r, 1024, &familyRequest{}) {
		return
	}
	parent := r.TLS.PeerCertificates[0].Subject.CommonName
	var b [8]byte
	rand.Read(b[:])
	name := hex.EncodeToString(b[:])
	fam, err := a.cfg.Store.NewFamily(name, parent)
	if err != nil {
		http.Error(w, "family: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	a.mu.Lock()
	a.families[name] = fam
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.families, name)
		a.mu.Unlock()
		fam.Close()
		a.cfg.Log.Info(fmt.Sprintf("family %s of %s ended", name, parent))
	}()
	a.cfg.Log.Info(fmt.Sprintf("family %s of %s", name, parent))
	s := startStream(w)
	s.send(agentapi.Event{Family: name})
	tick := time.NewTicker(agentapi.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			s.send(agentapi.Event{Alive: true})
		case <-fam.Done():
			s.send(agentapi.Event{End: true, Error: "the family's lease in the cluster ended"})
			return
		case <-a.ctx.Done():
			return
		case <-r.Context().Done():
			return
		}
	}
}

// familyCall decodes a request about one of this agent's families, and
// returns that family; it answers the error itself and returns nil.
func (a *Agent) familyCall(w http.ResponseWriter, r *http.Request, q interface {
	Check() error
	family() string
}) *cluster.Family {
	if !decode(w, r, 4096, q) {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	fam := a.families[q.family()]
	if fam == nil {
		http.Error(w, fmt.Sprintf("family %s is not one of agent %s's", q.family(), a.cfg.Host.Name), http.StatusNotFound)
	}
	return fam
}

type reserveRequest struct{ agentapi.ReserveRequest }

func (q *reserveRequest) family() string { return q.Family }

type releaseRequest struct{ agentapi.ReleaseRequest }

func (q *releaseRequest) family() string { return q.Family }

func (a *Agent) reserve(w http.ResponseWriter, r *http.Request) {
	var q reserveRequest
	fam := a.familyCall(w, r, &q)
	if fam == nil {
		return
	}
	hosts, err := fam.Reserve(q.Ticket, q.N, q.Placement)
	if err != nil && !errors.Is(err, cluster.ErrNoSlots) {
		http.Error(w, "reserve: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	json.NewEncoder(w).Encode(agentapi.ReserveReply{Hosts: hosts})
}

func (a *Agent) release(w http.ResponseWriter, r *http.Request) {
	var q releaseRequest
	fam := a.familyCall(w, r, &q)
	if fam == nil {
		return
	}
	if err := fam.Release(q.Ticket); err != nil {
		http.Error(w, "release: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("{}\n"))
}

func (a *Agent) launch(w http.ResponseWriter, r *http.Request) {
	var q agentapi.LaunchRequest
	if !decode(w, r, agentapi.MaxLaunch, &q) {
		return
	}
	slot := q.Family + "/" + strconv.FormatUint(uint64(q.Ticket), 10)
	reserved, err := a.cfg.Store.Reserved(r.Context(), a.cfg.Host.Name, q.Family, q.Ticket)
	if err != nil {
		http.Error(w, "launch: cluster: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	a.mu.Lock()
	if a.running[slot] >= reserved {
		a.mu.Unlock()
		http.Error(w, fmt.Sprintf("launch: family %s ticket %d holds %d slots on %s, all in use", q.Family, q.Ticket, reserved, a.cfg.Host.Name), http.StatusConflict)
		return
	}
	a.running[slot]++
	a.clones.Add(1)
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		if a.running[slot]--; a.running[slot] == 0 {
			delete(a.running, slot)
		}
		a.mu.Unlock()
		a.clones.Done()
	}()

	desc := filepath.Join(a.cfg.Dir, fmt.Sprintf("%s-%d-%d.sfd", q.Family, q.Ticket, q.ID))
	if err := os.WriteFile(desc, q.Descriptor, 0o600); err != nil {
		http.Error(w, "launch: "+err.Error(), http.StatusInternalServerError)
		return
	}
	defer os.Remove(desc)
	// The clone lives as long as its request, its family and this agent.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	familyGone := a.cfg.Store.WatchFamily(ctx, q.Family)
	go func() {
		select {
		case <-familyGone:
		case <-a.ctx.Done():
		case <-ctx.Done():
		}
		cancel()
	}()
	a.run(ctx, w, q, desc)
}

// run runs one clone and streams its events to w.
func (a *Agent) run(ctx context.Context, w http.ResponseWriter, q agentapi.LaunchRequest, desc string) {
	args := []string{"clone", "--descriptor", desc, "--ticket", strconv.FormatUint(uint64(q.Ticket), 10),
		"--id", strconv.FormatUint(uint64(q.ID), 10), "--host", a.cfg.Host.Name,
		// The parent is another process, maybe on another host.
		"--direct-reads=false"}
	cmd := exec.Command(a.cfg.Exe, append(args, a.cfg.CloneArgs...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err == nil {
		var stderr io.ReadCloser
		if stderr, err = cmd.StderrPipe(); err == nil {
			err = cmd.Start()
			if err == nil {
				a.cfg.Log.Info(fmt.Sprintf("family %s ticket %d: clone %d started (pid %d)", q.Family, q.Ticket, q.ID, cmd.Process.Pid))
				a.stream(ctx, w, cmd, stdout, stderr)
				return
			}
		}
	}
	http.Error(w, "launch: start clone: "+err.Error(), http.StatusInternalServerError)
}

// stream is a streamed response: events, one per line, each flushed.
type stream struct {
	w  http.ResponseWriter
	fl *http.ResponseController
}

func startStream(w http.ResponseWriter) stream {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	s := stream{w, http.NewResponseController(w)}
	s.fl.Flush()
	return s
}

// send writes e. A write to a peer that is gone fails: the request's
// context has ended or soon will, which ends what it streams.
func (s stream) send(e agentapi.Event) {
	s.w.Write(e.Encode())
	s.fl.Flush()
}

func (a *Agent) stream(ctx context.Context, w http.ResponseWriter, cmd *exec.Cmd, stdout, stderr io.Reader) {
	s := startStream(w)
	events := make(chan agentapi.Event, 64)
	var readers sync.WaitGroup
	for _, p := range []struct {
		r   io.Reader
		out bool
	}{{stdout, true}, {stderr, false}} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			sc := bufio.NewScanner(p.r)
			sc.Buffer(make([]byte, 4096), 1<<20)
			for sc.Scan() {
				if p.out {
					events <- agentapi.Event{Out: sc.Text()}
				} else {
					events <- agentapi.Event{Err: sc.Text()}
				}
			}
		}()
	}
	ended := make(chan error, 1)
	go func() {
		readers.Wait()
		ended <- cmd.Wait()
	}()
	tick := time.NewTicker(agentapi.Heartbeat)
	defer tick.Stop()
	killed := false
	for {
		select {
		case e := <-events:
			s.send(e)
		case <-tick.C:
			s.send(agentapi.Event{Alive: true})
		case <-ctx.Done():
			if !killed {
				killed = true
				cmd.Process.Kill()
			}
			ctx = context.Background() // wait on for the end
		case err := <-ended:
			for len(events) > 0 {
				s.send(<-events)
			}
			end := agentapi.Event{End: true}
			if err != nil {
				end.Error = describeExit(cmd, err, killed)
			}
			s.send(end)
			return
		}
	}
}

func describeExit(cmd *exec.Cmd, err error, killed bool) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			if killed {
				return fmt.Sprintf("clone process %d killed", cmd.Process.Pid)
			}
			return fmt.Sprintf("clone process %d killed by %v", cmd.Process.Pid, ws.Signal())
		}
		return fmt.Sprintf("clone process %d exited with status %d", cmd.Process.Pid, ee.ExitCode())
	}
	return err.Error()
}
