package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// route binds an endpoint to the Machine call that serves it.
type route struct {
	endpoint
	// exclusive routes change the machine and run one at a time.
	exclusive bool
	// call decodes and validates the body, calls the Machine and returns
	// the value to encode (noBody for 204).
	call func(ctx context.Context, m Machine, body io.Reader) (any, error)
}

// routeTable is the whole API. An operation is one line here plus a Machine
// method, e.g. handle(epFork, true, Machine.Fork).
func routeTable() []route {
	return []route{
		handle(epStatus, false, func(m Machine, _ context.Context, _ noBody) (Status, error) { return m.Status(), nil }),
		handle(epPause, true, func(m Machine, ctx context.Context, _ noBody) (noBody, error) { return noBody{}, m.Pause(ctx) }),
		handle(epResume, true, func(m Machine, ctx context.Context, _ noBody) (noBody, error) { return noBody{}, m.Resume(ctx) }),
		handle(epSnapshot, true, Machine.Snapshot),
		handle(epFork, true, Machine.Fork),
		handle(epJoin, false, Machine.Join),
		handle(epKill, false, func(m Machine, ctx context.Context, req TicketRequest) (noBody, error) {
			return noBody{}, m.Kill(ctx, req)
		}),
	}
}

// handle makes a route whose body decodes strictly into Req and whose answer
// is f's Resp. f has the shape of a Machine method expression.
func handle[Req, Resp any](ep endpoint, exclusive bool, f func(Machine, context.Context, Req) (Resp, error)) route {
	return route{endpoint: ep, exclusive: exclusive, call: func(ctx context.Context, m Machine, body io.Reader) (any, error) {
		var req Req
		if err := decodeBody(body, &req); err != nil {
			return nil, err
		}
		if v, ok := any(&req).(validator); ok {
			if err := v.validate(); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
			}
		}
		resp, err := f(m, ctx, req)
		if err != nil {
			return nil, err
		}
		return resp, nil
	}}
}

// decodeBody decodes one JSON value into v, refusing unknown fields and
// trailing data. An empty body leaves v at its zero value, so that routes
// without a body may be called with none.
func decodeBody(body io.Reader, v any) error {
	data, err := io.ReadAll(body)
	if err != nil {
		return fmt.Errorf("read request body: %w", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: decode request body: %w", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: decode request body: trailing data after JSON value", ErrInvalid)
	}
	return nil
}

// errBusy is returned when an exclusive route's deadline passes while
// another operation holds the machine.
var errBusy = errors.New("busy")

// Server serves the control API on a Unix socket.
type Server struct {
	path   string
	m      Machine
	logf   func(string, ...any)
	routes []route
	srv    *http.Server
	sock   os.FileInfo // the socket file we created, removed on Close only if still there

	// op serialises exclusive routes: holding its one slot is holding the
	// machine. opName (guarded by opMu) names the holder for busy errors.
	op     chan struct{}
	opMu   sync.Mutex
	opName string

	ctx    context.Context // base of every request context; cancelled by Close
	cancel context.CancelFunc

	mu       sync.Mutex // guards closed and the inflight.Add that it gates
	closed   bool
	inflight sync.WaitGroup // running handlers, awaited by Close

	served    chan struct{} // closed when http.Server.Serve has returned
	done      chan struct{} // closed when Close has finished
	closeOnce sync.Once
	closeErr  error
}

// Serve creates the socket at sockPath (mode 0600) and serves m on it until
// ctx is done or Close is called; either removes the socket. A socket file
// left by a dead server is replaced; one a live server answers on is refused
// with an error wrapping ErrInUse. logf, which may be nil, receives one line
// per request.
func Serve(ctx context.Context, sockPath string, m Machine, logf func(string, ...any)) (*Server, error) {
	return serve(ctx, sockPath, m, logf, routeTable())
}

func serve(ctx context.Context, sockPath string, m Machine, logf func(string, ...any), routes []route) (*Server, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	ln, fi, err := listen(sockPath, logf)
	if err != nil {
		return nil, fmt.Errorf("api: serve on %s: %w", sockPath, err)
	}
	s := &Server{
		path:   sockPath,
		m:      m,
		logf:   logf,
		routes: routes,
		sock:   fi,
		op:     make(chan struct{}, 1),
		served: make(chan struct{}),
		done:   make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.srv = &http.Server{
		Handler:           s,
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(logWriter(logf), "api: ", 0),
	}
	go func() {
		defer close(s.served)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logf("api: serve %s: %v", sockPath, err)
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			s.Close()
		case <-s.done:
		}
	}()
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Done is closed once the server has stopped and removed its socket.
func (s *Server) Done() <-chan struct{} { return s.done }

// Close stops the server: it cancels the contexts of requests in flight,
// closes every connection, waits for running handlers to return and removes
// the socket file. It is idempotent, and must not be called from a Machine
// method (it would wait for itself).
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cancel()
		err := s.srv.Close()
		s.inflight.Wait()
		<-s.served
		if rerr := removeIfSame(s.path, s.sock); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			s.closeErr = fmt.Errorf("api: close %s: %w", s.path, err)
		}
		close(s.done)
	})
	<-s.done
	return s.closeErr
}

// ServeHTTP dispatches a request through the route table.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, errors.New("server is shutting down"))
		return
	}
	s.inflight.Add(1)
	s.mu.Unlock()
	defer s.inflight.Done()

	start := time.Now()
	code, err := s.dispatch(w, r)
	if err != nil {
		s.logf("api: %s %s: %d in %v: %v", r.Method, r.URL.Path, code, time.Since(start).Round(time.Microsecond), err)
	} else {
		s.logf("api: %s %s: %d in %v", r.Method, r.URL.Path, code, time.Since(start).Round(time.Microsecond))
	}
}

// dispatch serves one request and returns the status sent and the error
// behind it, if any.
func (s *Server) dispatch(w http.ResponseWriter, r *http.Request) (int, error) {
	rt, allow := s.lookup(r.Method, r.URL.Path)
	if rt == nil {
		if allow == "" {
			return writeError(w, http.StatusNotFound, fmt.Errorf("no route %s", r.URL.Path))
		}
		w.Header().Set("Allow", allow)
		return writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, allow))
	}

	ctx, cancel := context.WithTimeout(r.Context(), rt.timeout)
	defer cancel()
	if rt.exclusive {
		release, err := s.acquire(ctx, rt.name)
		if err != nil {
			return writeError(w, statusOf(err), fmt.Errorf("%s: %w", rt.name, err))
		}
		defer release()
	}
	resp, err := rt.call(ctx, s.m, http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		return writeError(w, statusOf(err), err)
	}
	if _, ok := resp.(noBody); ok {
		w.WriteHeader(http.StatusNoContent)
		return http.StatusNoContent, nil
	}
	return writeJSON(w, http.StatusOK, resp)
}

// lookup finds the route for method and path. With no route for the method,
// allow lists the methods the path does accept ("" for an unknown path).
func (s *Server) lookup(method, path string) (*route, string) {
	var allowed []string
	for i := range s.routes {
		if s.routes[i].path != path {
			continue
		}
		if s.routes[i].method == method {
			return &s.routes[i], ""
		}
		allowed = append(allowed, s.routes[i].method)
	}
	return nil, strings.Join(allowed, ", ")
}

// acquire takes the machine for an exclusive operation, waiting at most
// until ctx is done.
func (s *Server) acquire(ctx context.Context, name string) (release func(), err error) {
	select {
	case s.op <- struct{}{}:
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			s.opMu.Lock()
			holder := s.opName
			s.opMu.Unlock()
			return nil, fmt.Errorf("%w: timed out waiting for %s to finish", errBusy, holder)
		}
		return nil, ctx.Err()
	}
	// Both cases may have been ready; a request whose client is gone
	// must not run after all.
	if err := ctx.Err(); err != nil {
		<-s.op
		return nil, err
	}
	s.opMu.Lock()
	s.opName = name
	s.opMu.Unlock()
	return func() { <-s.op }, nil
}

// statusOf maps an error to its HTTP status.
func statusOf(err error) int {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, errBusy):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	default:
		return http.StatusInternalServerError
	}
}

// errorBody is the JSON body of every error answer.
type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, err error) (int, error) {
	writeJSON(w, code, errorBody{Error: err.Error()})
	return code, err
}

func writeJSON(w http.ResponseWriter, code int, v any) (int, error) {
	data, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		data, _ = json.Marshal(errorBody{Error: fmt.Sprintf("encode response: %v", err)})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(data, '\n'))
	return code, err
}

// logWriter adapts logf to the *log.Logger that http.Server reports
// connection-level errors (and handler panics) to.
type logWriter func(string, ...any)

func (f logWriter) Write(p []byte) (int, error) {
	f("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
