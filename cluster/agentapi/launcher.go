package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sfvmm/sfvmm/cluster/pki"
	"github.com/sfvmm/sfvmm/vmm/fork"
)

// callLimit bounds a call to an agent, and the start of a stream (an
// agent starting a clone answers once the process runs).
const callLimit = 30 * time.Second

// Config is how a parent reaches its cluster.
type Config struct {
	// Agent is this host's agent: Name (its certificate's) and Agent
	// (its address) are used.
	Agent     Host
	Identity  *pki.Identity
	Placement Placement
	// Console receives the clones' console lines, Stderr their log lines.
	Console func(line []byte) error
	Stderr  io.Writer
	Log     *slog.Logger
}

// Launcher is a parent's fork.Launcher and fork.Placer for a cluster.
type Launcher struct {
	cfg    Config
	family string
	end    context.CancelFunc // ends the family
	lost   chan struct{}      // closed when the family stream ends

	mu     sync.Mutex
	placed map[uint32][]Host // ticket → the host of each clone
}

var (
	_ fork.Launcher = (*Launcher)(nil)
	_ fork.Placer   = (*Launcher)(nil)
)

// Join makes the parent a clone family through its host's agent; the
// family lives until Close.
func Join(cfg Config) (*Launcher, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	l := &Launcher{cfg: cfg, lost: make(chan struct{}), placed: map[uint32][]Host{}}
	ctx, cancel := context.WithCancel(context.Background())
	body, err := l.open(ctx, cfg.Agent, FamilyPath, struct{}{})
	if err != nil {
		cancel()
		return nil, err
	}
	named := make(chan string, 1)
	go func() {
		defer close(l.lost)
		err := readStream(body, Silence, cancel, func(e Event) bool {
			if e.Family != "" {
				named <- e.Family
			}
			return e.End
		})
		if ctx.Err() == nil {
			cfg.Log.Error(fmt.Sprintf("clone family lost: agent %s: %v", cfg.Agent.Name, err))
		}
	}()
	select {
	case l.family = <-named:
	case <-l.lost:
		cancel()
		return nil, fmt.Errorf("agent %s: the family stream ended before it began", cfg.Agent.Name)
	}
	l.end = cancel
	return l, nil
}

// Family is the family's name in the cluster.
func (l *Launcher) Family() string { return l.family }

// Lost is closed when the family has ended (Close, or its agent is gone).
func (l *Launcher) Lost() <-chan struct{} { return l.lost }

// Close ends the family: its slots return and its clones are killed.
func (l *Launcher) Close() {
	l.end()
	<-l.lost
}

// Reserve implements fork.Placer.
func (l *Launcher) Reserve(ticket uint32, n int) (int, error) {
	var r ReserveReply
	if err := l.call(ReservePath, ReserveRequest{Family: l.family, Ticket: ticket, N: n, Placement: l.cfg.Placement}, &r); err != nil {
		return 0, err
	}
	if len(r.Hosts) > n {
		return 0, fmt.Errorf("agent %s reserved %d slots, %d asked", l.cfg.Agent.Name, len(r.Hosts), n)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.placed[ticket] = r.Hosts
	return len(r.Hosts), nil
}

// Release implements fork.Placer.
func (l *Launcher) Release(ticket uint32) {
	l.mu.Lock()
	delete(l.placed, ticket)
	l.mu.Unlock()
	if err := l.call(ReleasePath, ReleaseRequest{Family: l.family, Ticket: ticket}, nil); err != nil {
		l.cfg.Log.Warn(fmt.Sprintf("ticket %d: give its slots back: %v (they return when this VM ends)", ticket, err))
	}
}

// Host says on which host clone id of ticket runs.
func (l *Launcher) Host(ticket, id uint32) (Host, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	hosts := l.placed[ticket]
	if id == 0 || int(id) > len(hosts) {
		return Host{}, false
	}
	return hosts[id-1], true
}

// Launch implements fork.Launcher.
func (l *Launcher) Launch(descriptor string, ticket, id uint32) (fork.Clone, error) {
	host, ok := l.Host(ticket, id)
	if !ok {
		return nil, fmt.Errorf("clone %d of ticket %d has no reserved slot", id, ticket)
	}
	d, err := os.ReadFile(descriptor)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	body, err := l.open(ctx, host, LaunchPath, LaunchRequest{Family: l.family, Ticket: ticket, ID: id, Descriptor: d})
	if err != nil {
		cancel()
		return nil, err
	}
	c := &remoteClone{host: host.Name, cancel: cancel, done: make(chan struct{})}
	go c.read(body, l)
	return c, nil
}

func (l *Launcher) client(server string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:       l.cfg.Identity.ClientTLS(server),
		TLSHandshakeTimeout:   callLimit,
		ResponseHeaderTimeout: callLimit,
		DisableKeepAlives:     true,
		// HTTP/1.1, as agents serve: a stream is its own connection.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
}

// open posts q to host's path and returns the streamed response.
func (l *Launcher) open(ctx context.Context, host Host, path string, q any) (io.ReadCloser, error) {
	b, err := json.Marshal(q)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+host.Agent+path, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	resp, err := l.client(host.Name).Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent %s at %s: %w", host.Name, host.Agent, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("agent %s: %s", host.Name, bytes.TrimSpace(msg))
	}
	return resp.Body, nil
}

// call posts q to this host's agent and decodes its answer into r.
func (l *Launcher) call(path string, q, r any) error {
	ctx, cancel := context.WithTimeout(context.Background(), callLimit)
	defer cancel()
	body, err := l.open(ctx, l.cfg.Agent, path, q)
	if err != nil {
		return err
	}
	defer body.Close()
	if r == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(body, 1<<20)).Decode(r); err != nil {
		return fmt.Errorf("agent %s: %s: %w", l.cfg.Agent.Name, path, err)
	}
	return nil
}

// errSilent: a stream said nothing, not even a heartbeat, for Silence.
var errSilent = fmt.Errorf("silent for %v", Silence)

// readStream hands body's events to each until it returns true (nil) or
// the stream fails; a stream silent for silence (Silence) is cut off
// (cancel) and fails with errSilent.
func readStream(body io.ReadCloser, silence time.Duration, cancel context.CancelFunc, each func(Event) bool) error {
	defer body.Close()
	var silent atomic.Bool
	timer := time.AfterFunc(silence, func() { silent.Store(true); cancel() })
	defer timer.Stop()
	s := bufio.NewScanner(body)
	s.Buffer(make([]byte, 4096), 2<<20)
	for s.Scan() {
		if !timer.Stop() {
			break // the timer fired while this line came in
		}
		timer.Reset(silence)
		var e Event
		if err := json.Unmarshal(s.Bytes(), &e); err != nil {
			return fmt.Errorf("bad event: %w", err)
		}
		if each(e) {
			return nil
		}
	}
	if silent.Load() {
		return errSilent
	}
	if err := s.Err(); err != nil {
		return err
	}
	return io.ErrUnexpectedEOF
}

// remoteClone is a clone that an agent runs.
type remoteClone struct {
	host   string
	cancel context.CancelFunc
	killed atomic.Bool
	done   chan struct{}
	err    error
}

func (c *remoteClone) read(body io.ReadCloser, l *Launcher) {
	defer close(c.done)
	defer c.cancel()
	var end error
	err := readStream(body, Silence, c.cancel, func(e Event) bool {
		switch {
		case e.End:
			if e.Error != "" {
				end = fmt.Errorf("on %s: %s", c.host, e.Error)
			}
			return true
		case e.Out != "" && l.cfg.Console != nil:
			l.cfg.Console([]byte(e.Out + "\n"))
		case e.Err != "" && l.cfg.Stderr != nil:
			fmt.Fprintln(l.cfg.Stderr, e.Err)
		}
		return false
	})
	switch {
	case err == nil:
		c.err = end
	case c.killed.Load():
		c.err = fmt.Errorf("clone killed on %s", c.host)
	case errors.Is(err, errSilent):
		c.err = fmt.Errorf("agent %s %v: clone lost", c.host, err)
	default:
		c.err = fmt.Errorf("agent %s: connection lost: %w", c.host, err)
	}
}

func (c *remoteClone) Wait() error {
	<-c.done
	return c.err
}

// Kill ends the clone: its agent kills it when its request ends.
func (c *remoteClone) Kill() error {
	c.killed.Store(true)
	c.cancel()
	return nil
}
