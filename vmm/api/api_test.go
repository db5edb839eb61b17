package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeMachine records calls and can be told to fail or to block a snapshot.
type fakeMachine struct {
	mu        sync.Mutex // guards every field below
	state     string
	calls     []string
	lastSnap  SnapshotRequest
	active    int // exclusive calls in progress
	maxActive int
	pauseErr  error
	resumeErr error
	snapErr   error
	// snapGate, when set, holds Snapshot (paused) until it is closed or the
	// context ends; snapStarted is then closed as Snapshot begins waiting.
	snapGate    chan struct{}
	snapStarted chan struct{}
}

func newFake() *fakeMachine { return &fakeMachine{state: StateRunning} }

func (f *fakeMachine) enter(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
	f.active++
	f.maxActive = max(f.maxActive, f.active)
}

func (f *fakeMachine) leave() {
	f.mu.Lock()
	f.active--
	f.mu.Unlock()
}

func (f *fakeMachine) setState(s string) {
	f.mu.Lock()
	f.state = s
	f.mu.Unlock()
}

func (f *fakeMachine) Fork(ctx context.Context, req ForkRequest) (ForkInfo, error) {
	f.enter("fork")
	defer f.leave()
	info := ForkInfo{Ticket: 1}
	for i := 1; i <= req.Clones; i++ {
		info.Clones = append(info.Clones, uint32(i))
	}
	return info, nil
}

func (f *fakeMachine) Join(ctx context.Context, req TicketRequest) (JoinInfo, error) {
	f.enter("join")
	defer f.leave()
	return JoinInfo{}, nil
}

func (f *fakeMachine) Kill(ctx context.Context, req TicketRequest) error {
	f.enter("kill")
	defer f.leave()
	return nil
}

func (f *fakeMachine) Pause(ctx context.Context) error {
	f.enter("pause")
	defer f.leave()
	if f.pauseErr != nil {
		return f.pauseErr
	}
	f.setState(StatePaused)
	return nil
}

func (f *fakeMachine) Resume(ctx context.Context) error {
	f.enter("resume")
	defer f.leave()
	if f.resumeErr != nil {
		return f.resumeErr
	}
	f.setState(StateRunning)
	return nil
}

func (f *fakeMachine) Snapshot(ctx context.Context, req SnapshotRequest) (SnapshotInfo, error) {
	f.enter("snapshot")
	defer f.leave()
	f.mu.Lock()
	f.lastSnap = req
	f.mu.Unlock()
	if f.snapErr != nil {
		return SnapshotInfo{}, f.snapErr
	}
	f.setState(StatePaused)
	if f.snapGate != nil {
		close(f.snapStarted)
		select {
		case <-f.snapGate:
		case <-ctx.Done():
			f.setState(StateRunning)
			return SnapshotInfo{}, fmt.Errorf("write snapshot: %w", ctx.Err())
		}
	}
	if !req.StayPaused {
		f.setState(StateRunning)
	}
	return SnapshotInfo{Dir: req.Dir, DescriptorBytes: 4096, MemoryBytes: 1 << 20, Pages: 256, PausedNanos: 1500, WriteNanos: 900}, nil
}

func (f *fakeMachine) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Status{State: f.state, CPUs: 2, MemBytes: 512 << 20, Kernel: "bzImage", UptimeNanos: 42, PID: 1234}
}

func (f *fakeMachine) snapRequest() SnapshotRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastSnap
}

func (f *fakeMachine) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// sockPath returns a socket path short enough for sun_path, removed with
// its directory at the end of the test.
func sockPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sfvmm-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "api.sock")
}

// logSink collects the server's log lines and lets a test wait for one.
type logSink struct {
	mu    sync.Mutex
	lines []string
	ch    chan string
}

func newLogSink() *logSink { return &logSink{ch: make(chan string, 100)} }

func (l *logSink) logf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
	select {
	case l.ch <- s:
	default:
	}
}

// waitFor returns the first line logged from now on that contains substr.
func (l *logSink) waitFor(t *testing.T, substr string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case s := <-l.ch:
			if strings.Contains(s, substr) {
				return s
			}
		case <-timeout:
			t.Fatalf("no log line containing %q", substr)
		}
	}
}

func startServer(t *testing.T, m Machine, routes []route) (*Server, *Client, *logSink) {
	t.Helper()
	if routes == nil {
		routes = routeTable()
	}
	logs := newLogSink()
	s, err := serve(context.Background(), sockPath(t), m, logs.logf, routes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c := Dial(s.Path())
	t.Cleanup(c.Close)
	return s, c, logs
}

// rawDo sends one request straight over the socket, for the cases a Client
// never produces.
func rawDo(t *testing.T, path, method, target, body string) (int, http.Header, []byte) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequest(method, "http://sfvmm"+target, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, data
}

func TestRoutes(t *testing.T) {
	errStopped := fmt.Errorf("vm is stopped: %w", ErrConflict)
	tests := []struct {
		name      string
		method    string
		path      string
		body      string
		setup     func(*fakeMachine)
		wantCode  int
		wantBody  any    // decoded and compared on success
		wantErr   string // substring of the JSON error on failure
		wantCalls []string
		wantAllow string
	}{
		{name: "status", method: "GET", path: "/status", wantCode: 200,
			wantBody: Status{State: StateRunning, CPUs: 2, MemBytes: 512 << 20, Kernel: "bzImage", UptimeNanos: 42, PID: 1234}},
		{name: "pause", method: "PUT", path: "/pause", wantCode: 204, wantCalls: []string{"pause"}},
		{name: "pause with empty object", method: "PUT", path: "/pause", body: "{}", wantCode: 204, wantCalls: []string{"pause"}},
		{name: "resume", method: "PUT", path: "/resume", wantCode: 204, wantCalls: []string{"resume"}},
		{name: "snapshot", method: "PUT", path: "/snapshot", body: `{"dir":"/snap/a/","stay_paused":true}`, wantCode: 200,
			wantBody:  SnapshotInfo{Dir: "/snap/a", DescriptorBytes: 4096, MemoryBytes: 1 << 20, Pages: 256, PausedNanos: 1500, WriteNanos: 900},
			wantCalls: []string{"snapshot"}},
		{name: "malformed json", method: "PUT", path: "/snapshot", body: `{"dir":`, wantCode: 400, wantErr: "decode request body"},
		{name: "wrong type", method: "PUT", path: "/snapshot", body: `{"dir":7}`, wantCode: 400, wantErr: "decode request body"},
		{name: "unknown field", method: "PUT", path: "/snapshot", body: `{"dir":"/x","bogus":1}`, wantCode: 400, wantErr: `unknown field "bogus"`},
		{name: "trailing data", method: "PUT", path: "/snapshot", body: `{"dir":"/x"} {}`, wantCode: 400, wantErr: "trailing data"},
		{name: "missing dir", method: "PUT", path: "/snapshot", body: `{"overwrite":true}`, wantCode: 400, wantErr: "dir is required"},
		{name: "empty snapshot body", method: "PUT", path: "/snapshot", wantCode: 400, wantErr: "dir is required"},
		{name: "relative dir", method: "PUT", path: "/snapshot", body: `{"dir":"snap"}`, wantCode: 400, wantErr: "absolute"},
		{name: "body on pause", method: "PUT", path: "/pause", body: `{"now":true}`, wantCode: 400, wantErr: `unknown field "now"`},
		{name: "body too large", method: "PUT", path: "/snapshot", body: `{"dir":"/` + strings.Repeat("a", maxBody) + `"}`, wantCode: 413, wantErr: "too large"},
		{name: "wrong method on pause", method: "POST", path: "/pause", wantCode: 405, wantErr: "not allowed", wantAllow: "PUT"},
		{name: "wrong method on snapshot", method: "GET", path: "/snapshot", wantCode: 405, wantErr: "not allowed", wantAllow: "PUT"},
		{name: "wrong method on status", method: "PUT", path: "/status", wantCode: 405, wantErr: "not allowed", wantAllow: "GET"},
		{name: "unknown path", method: "GET", path: "/nope", wantCode: 404, wantErr: "no route /nope"},
		{name: "conflict", method: "PUT", path: "/pause", setup: func(f *fakeMachine) { f.pauseErr = errStopped },
			wantCode: 409, wantErr: "vm is stopped", wantCalls: []string{"pause"}},
		{name: "machine rejects request", method: "PUT", path: "/snapshot", body: `{"dir":"/x"}`,
			setup:    func(f *fakeMachine) { f.snapErr = fmt.Errorf("dir /x exists: %w", ErrInvalid) },
			wantCode: 400, wantErr: "dir /x exists", wantCalls: []string{"snapshot"}},
		{name: "internal error", method: "PUT", path: "/resume", setup: func(f *fakeMachine) { f.resumeErr = errors.New("KVM_RUN: bad address") },
			wantCode: 500, wantErr: "KVM_RUN: bad address", wantCalls: []string{"resume"}},
		{name: "deadline", method: "PUT", path: "/resume", setup: func(f *fakeMachine) { f.resumeErr = fmt.Errorf("resume: %w", context.DeadlineExceeded) },
			wantCode: 504, wantErr: "deadline exceeded", wantCalls: []string{"resume"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			if tc.setup != nil {
				tc.setup(f)
			}
			s, _, _ := startServer(t, f, nil)
			code, hdr, body := rawDo(t, s.Path(), tc.method, tc.path, tc.body)
			if code != tc.wantCode {
				t.Fatalf("status %d, want %d; body %s", code, tc.wantCode, body)
			}
			switch {
			case code == 204:
				if len(body) != 0 {
					t.Errorf("204 with body %q", body)
				}
			case code == 200:
				got := newLike(tc.wantBody)
				if err := json.Unmarshal(body, got); err != nil {
					t.Fatalf("decode %s: %v", body, err)
				}
				if g := derefAny(got); g != tc.wantBody {
					t.Errorf("body %+v, want %+v", g, tc.wantBody)
				}
			default:
				if ct := hdr.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q", ct)
				}
				var eb errorBody
				if err := json.Unmarshal(body, &eb); err != nil {
					t.Fatalf("error body %q is not JSON: %v", body, err)
				}
				if !strings.Contains(eb.Error, tc.wantErr) {
					t.Errorf("error %q does not contain %q", eb.Error, tc.wantErr)
				}
			}
			if got := hdr.Get("Allow"); got != tc.wantAllow {
				t.Errorf("Allow %q, want %q", got, tc.wantAllow)
			}
			if got := f.callList(); strings.Join(got, ",") != strings.Join(tc.wantCalls, ",") {
				t.Errorf("machine calls %v, want %v", got, tc.wantCalls)
			}
		})
	}
}

// newLike returns a pointer to a new zero value of v's type.
func newLike(v any) any {
	switch v.(type) {
	case Status:
		return new(Status)
	case SnapshotInfo:
		return new(SnapshotInfo)
	}
	panic(fmt.Sprintf("newLike: %T", v))
}

func derefAny(p any) any {
	switch p := p.(type) {
	case *Status:
		return *p
	case *SnapshotInfo:
		return *p
	}
	panic(fmt.Sprintf("derefAny: %T", p))
}

func TestClient(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	_, c, _ := startServer(t, f, nil)

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateRunning || st.CPUs != 2 || st.MemBytes != 512<<20 || st.PID != 1234 {
		t.Errorf("status %+v", st)
	}
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.Status(ctx); st.State != StatePaused {
		t.Errorf("after pause: state %q", st.State)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.Status(ctx); st.State != StateRunning {
		t.Errorf("after resume: state %q", st.State)
	}
	info, err := c.Snapshot(ctx, SnapshotRequest{Dir: "/var/snap", Overwrite: true})
	if err != nil {
		t.Fatal(err)
	}
	if info.Dir != "/var/snap" || info.Pages != 256 || info.PausedNanos != 1500 {
		t.Errorf("snapshot info %+v", info)
	}
	if got := f.snapRequest(); got != (SnapshotRequest{Dir: "/var/snap", Overwrite: true}) {
		t.Errorf("machine got %+v", got)
	}
	if got := strings.Join(f.callList(), ","); got != "pause,resume,snapshot" {
		t.Errorf("calls %s", got)
	}
}

func TestClientErrors(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(*fakeMachine)
		call     func(*Client) error
		wantCode int
		wantIs   error
		wantMsg  string
	}{
		{name: "conflict", setup: func(f *fakeMachine) { f.snapErr = fmt.Errorf("vm is stopped (exit 3): %w", ErrConflict) },
			call: func(c *Client) error {
				_, err := c.Snapshot(context.Background(), SnapshotRequest{Dir: "/s"})
				return err
			},
			wantCode: 409, wantIs: ErrConflict, wantMsg: "snapshot: vm is stopped (exit 3)"},
		{name: "missing dir", call: func(c *Client) error {
			_, err := c.Snapshot(context.Background(), SnapshotRequest{})
			return err
		}, wantCode: 400, wantIs: ErrInvalid, wantMsg: "dir is required"},
		{name: "internal", setup: func(f *fakeMachine) { f.pauseErr = errors.New("pause vcpu 1: interrupted") },
			call:     func(c *Client) error { return c.Pause(context.Background()) },
			wantCode: 500, wantMsg: "pause: pause vcpu 1: interrupted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			if tc.setup != nil {
				tc.setup(f)
			}
			_, c, _ := startServer(t, f, nil)
			err := tc.call(c)
			var ae *Error
			if !errors.As(err, &ae) {
				t.Fatalf("error %v (%T) is not an *Error", err, err)
			}
			if ae.StatusCode != tc.wantCode {
				t.Errorf("status %d, want %d", ae.StatusCode, tc.wantCode)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("errors.Is(%v, %v) is false", err, tc.wantIs)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tc.wantMsg)
			}
		})
	}
}

func TestClientMakesDirAbsolute(t *testing.T) {
	f := newFake()
	_, c, _ := startServer(t, f, nil)
	info, err := c.Snapshot(context.Background(), SnapshotRequest{Dir: "out/snap"})
	if err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(wd, "out/snap")
	if got := f.snapRequest().Dir; got != want || info.Dir != want {
		t.Errorf("machine got dir %q, answer %q; want %q", got, info.Dir, want)
	}
}

func TestSocketMode(t *testing.T) {
	s, _, _ := startServer(t, newFake(), nil)
	fi, err := os.Lstat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want socket 0600", fi.Mode())
	}
}

func TestServeRefusesLiveSocket(t *testing.T) {
	s, c, _ := startServer(t, newFake(), nil)
	s2, err := Serve(context.Background(), s.Path(), newFake(), nil)
	if err == nil {
		s2.Close()
		t.Fatal("second Serve on a live socket succeeded")
	}
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), s.Path()) {
		t.Errorf("error %q: want ErrInUse naming the socket", err)
	}
	// The first server is untouched.
	if _, err := c.Status(context.Background()); err != nil {
		t.Errorf("first server after refused second: %v", err)
	}
}

// staleSocket leaves a socket file at path that nothing listens on, as a
// killed server would.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
}

func TestServeReplacesStaleSocket(t *testing.T) {
	path := sockPath(t)
	staleSocket(t, path)
	logs := newLogSink()
	s, err := Serve(context.Background(), path, newFake(), logs.logf)
	if err != nil {
		t.Fatalf("Serve over stale socket: %v", err)
	}
	defer s.Close()
	c := Dial(path)
	defer c.Close()
	if st, err := c.Status(context.Background()); err != nil || st.State != StateRunning {
		t.Errorf("status %+v, %v", st, err)
	}
	if !strings.Contains(strings.Join(logs.lines, "\n"), "removed stale socket") {
		t.Errorf("no log of the stale socket's removal: %q", logs.lines)
	}
}

func TestServeRefusesNonSocket(t *testing.T) {
	path := sockPath(t)
	if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if s, err := Serve(context.Background(), path, newFake(), nil); err == nil {
		s.Close()
		t.Fatal("Serve replaced a regular file")
	} else if !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("error %q", err)
	}
	if data, err := os.ReadFile(path); err != nil || string(data) != "precious" {
		t.Errorf("file changed: %q, %v", data, err)
	}
}

func TestServeRefusesLongPath(t *testing.T) {
	path := "/tmp/" + strings.Repeat("x", 120) + ".sock"
	_, err := Serve(context.Background(), path, newFake(), nil)
	if err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("error %v, want a path length error", err)
	}
}

func TestCloseRemovesSocket(t *testing.T) {
	s, _, _ := startServer(t, newFake(), nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(s.Path()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestContextEndsServer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Serve(ctx, sockPath(t), newFake(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("server still running after its context ended")
	}
	if _, err := os.Lstat(s.Path()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there: %v", err)
	}
}

func TestCloseKeepsForeignSocket(t *testing.T) {
	// A socket that is no longer ours (replaced behind our back) stays.
	s, _, _ := startServer(t, newFake(), nil)
	if err := os.Remove(s.Path()); err != nil {
		t.Fatal(err)
	}
	staleSocket(t, s.Path())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(s.Path()); err != nil {
		t.Errorf("Close removed a socket it did not create: %v", err)
	}
}

func TestDeadServer(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, path string)
		timeout time.Duration // client context deadline; 0 for none
		want    string
	}{
		{name: "closed server", setup: func(t *testing.T, path string) {
			s, err := Serve(context.Background(), path, newFake(), nil)
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
		}, want: "no sfvmm listening on"},
		{name: "no socket", setup: func(*testing.T, string) {}, want: "no sfvmm listening on"},
		{name: "stale socket", setup: staleSocket, want: "connection refused"},
		{name: "server never answers", setup: func(t *testing.T, path string) {
			// Accepts and reads, never writes: a hung or stopped VMM.
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					t.Cleanup(func() { c.Close() })
					go io.Copy(io.Discard, c)
				}
			}()
		}, timeout: 200 * time.Millisecond, want: "no answer from sfvmm on"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := sockPath(t)
			tc.setup(t, path)
			c := Dial(path)
			defer c.Close()
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			errc := make(chan error, 1)
			go func() { _, err := c.Status(ctx); errc <- err }()
			select {
			case err := <-errc:
				if err == nil {
					t.Fatal("Status on a dead server succeeded")
				}
				if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
					t.Errorf("error %q: want %q and the socket path", err, tc.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("client hung on a dead server")
			}
		})
	}
}

// slowSnapshot starts a Snapshot that blocks in the machine and returns the
// fake, the client, the logs and a channel with the snapshot's outcome.
func slowSnapshot(t *testing.T, routes []route) (*fakeMachine, *Server, *Client, *logSink, <-chan error) {
	t.Helper()
	f := newFake()
	f.snapGate = make(chan struct{})
	f.snapStarted = make(chan struct{})
	s, c, logs := startServer(t, f, routes)
	errc := make(chan error, 1)
	go func() {
		info, err := c.Snapshot(context.Background(), SnapshotRequest{Dir: "/snap"})
		if err == nil && info.Dir != "/snap" {
			err = fmt.Errorf("snapshot info %+v", info)
		}
		errc <- err
	}()
	<-f.snapStarted
	return f, s, c, logs, errc
}

func TestStatusDuringSlowSnapshot(t *testing.T) {
	f, _, c, _, snapErr := slowSnapshot(t, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := c.Status(context.Background())
			if err == nil && st.State != StatePaused {
				err = fmt.Errorf("state %q during snapshot, want paused", st.State)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	close(f.snapGate)
	if err := <-snapErr; err != nil {
		t.Fatal(err)
	}
	if st, _ := c.Status(context.Background()); st.State != StateRunning {
		t.Errorf("state %q after snapshot, want running", st.State)
	}
}

func TestExclusiveRoutesSerialised(t *testing.T) {
	f := newFake()
	_, c, _ := startServer(t, f, nil)
	var wg sync.WaitGroup
	const n = 10
	errs := make(chan error, 3*n)
	for i := range n {
		wg.Add(3)
		go func() { defer wg.Done(); errs <- c.Pause(context.Background()) }()
		go func() { defer wg.Done(); errs <- c.Resume(context.Background()) }()
		go func() {
			defer wg.Done()
			_, err := c.Snapshot(context.Background(), SnapshotRequest{Dir: fmt.Sprintf("/s/%d", i)})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) != 3*n {
		t.Errorf("%d machine calls, want %d", len(f.calls), 3*n)
	}
	if f.maxActive != 1 {
		t.Errorf("%d exclusive calls ran at once, want 1", f.maxActive)
	}
}

func TestAbandonedRequestDoesNotRun(t *testing.T) {
	// A pause queued behind a snapshot whose client gives up must not run
	// once the snapshot finishes.
	f, _, c, logs, snapErr := slowSnapshot(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.Pause(ctx); err == nil {
		t.Fatal("pause behind a blocked snapshot succeeded")
	}
	logs.waitFor(t, "PUT /pause")
	close(f.snapGate)
	if err := <-snapErr; err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.callList(), ","); got != "snapshot" {
		t.Errorf("machine calls %s, want only snapshot", got)
	}
}

func TestBusyTimeout(t *testing.T) {
	// With the server's bound on pause shortened, a pause waiting behind a
	// snapshot gets 503 naming the operation it waited for.
	routes := routeTable()
	for i := range routes {
		if routes[i].path == "/pause" {
			routes[i].timeout = 50 * time.Millisecond
		}
	}
	f, _, c, _, snapErr := slowSnapshot(t, routes)
	err := c.Pause(context.Background())
	var ae *Error
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusServiceUnavailable || !strings.Contains(ae.Message, "waiting for snapshot") {
		t.Errorf("pause behind snapshot: %v, want 503 naming snapshot", err)
	}
	close(f.snapGate)
	if err := <-snapErr; err != nil {
		t.Fatal(err)
	}
}

func TestCloseDuringSlowSnapshot(t *testing.T) {
	// Close cancels the machine call and the client gets an error, not a
	// hang.
	_, s, _, _, snapErr := slowSnapshot(t, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-snapErr:
		if err == nil {
			t.Error("snapshot succeeded across Close")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("client hung after server Close")
	}
}

func TestForkJoinKill(t *testing.T) {
	f := newFake()
	_, c, _ := startServer(t, f, nil)
	ctx := context.Background()
	info, err := c.Fork(ctx, ForkRequest{Clones: 3})
	if err != nil {
		t.Fatal(err)
	}
	if info.Ticket != 1 || len(info.Clones) != 3 {
		t.Errorf("fork: %+v, want ticket 1 with 3 clones", info)
	}
	if _, err := c.Fork(ctx, ForkRequest{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("fork of 0 clones: %v, want ErrInvalid", err)
	}
	if _, err := c.Join(ctx, 1); err != nil {
		t.Errorf("join: %v", err)
	}
	if err := c.Kill(ctx, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("kill of ticket 0: %v, want ErrInvalid", err)
	}
	if err := c.Kill(ctx, 1); err != nil {
		t.Errorf("kill: %v", err)
	}
}
