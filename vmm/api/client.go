package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"
)

const (
	// dialTimeout bounds connecting; a stopped server with a full backlog
	// would otherwise hold a connect until the request's deadline.
	dialTimeout = 5 * time.Second
	// clientGrace is how much longer than the server's own bound on an
	// operation the client waits when its context has no deadline.
	clientGrace = 5 * time.Second
)

// Client calls the control API of the sfvmm serving a socket.
type Client struct {
	path string
	hc   *http.Client
}

// Dial returns a client for the server on sockPath. It connects lazily, on
// each call; a missing or dead server is reported by the call, naming the
// socket.
func Dial(sockPath string) *Client {
	d := net.Dialer{Timeout: dialTimeout}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := d.DialContext(ctx, "unix", sockPath)
			if err != nil {
				return nil, &dialError{path: sockPath, err: err}
			}
			return c, nil
		},
		MaxIdleConns:       2,
		IdleConnTimeout:    30 * time.Second,
		DisableCompression: true,
	}
	return &Client{path: sockPath, hc: &http.Client{Transport: tr}}
}

// Close releases the client's idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Status returns the machine's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	return call[Status](ctx, c, epStatus, nil)
}

// Pause stops the machine's vCPUs.
func (c *Client) Pause(ctx context.Context) error {
	_, err := call[noBody](ctx, c, epPause, nil)
	return err
}

// Resume restarts the machine's vCPUs.
func (c *Client) Resume(ctx context.Context) error {
	_, err := call[noBody](ctx, c, epResume, nil)
	return err
}

// Snapshot writes a snapshot of the machine to req.Dir; a relative Dir is
// taken relative to the caller's working directory.
func (c *Client) Snapshot(ctx context.Context, req SnapshotRequest) (SnapshotInfo, error) {
	if req.Dir != "" && !filepath.IsAbs(req.Dir) {
		abs, err := filepath.Abs(req.Dir)
		if err != nil {
			return SnapshotInfo{}, fmt.Errorf("snapshot: %w", err)
		}
		req.Dir = abs
	}
	return call[SnapshotInfo](ctx, c, epSnapshot, req)
}

// Fork forks the machine into req.Clones clones.
func (c *Client) Fork(ctx context.Context, req ForkRequest) (ForkInfo, error) {
	return call[ForkInfo](ctx, c, epFork, req)
}

// Join waits for the clones of a ticket to end.
func (c *Client) Join(ctx context.Context, ticket uint32) (JoinInfo, error) {
	return call[JoinInfo](ctx, c, epJoin, TicketRequest{Ticket: ticket})
}

// Kill ends the clones of a ticket.
func (c *Client) Kill(ctx context.Context, ticket uint32) error {
	_, err := call[noBody](ctx, c, epKill, TicketRequest{Ticket: ticket})
	return err
}

// Error is the server's answer to a failed call.
type Error struct {
	Op         string // "snapshot", "pause", ...
	StatusCode int    // HTTP status
	Message    string // the server's explanation
}

func (e *Error) Error() string { return e.Op + ": " + e.Message }

// Is makes errors.Is(err, ErrConflict) and errors.Is(err, ErrInvalid) hold
// for the server's 409 and 400 answers.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrConflict:
		return e.StatusCode == http.StatusConflict
	case ErrInvalid:
		return e.StatusCode == http.StatusBadRequest
	}
	return false
}

// dialError is a failure to reach the server at all.
type dialError struct {
	path string
	err  error
}

func (e *dialError) Error() string {
	// The net error repeats the path; keep only its cause.
	cause := e.err
	var oe *net.OpError
	if errors.As(cause, &oe) && oe.Err != nil {
		cause = oe.Err
	}
	return fmt.Sprintf("no sfvmm listening on %s: %v", e.path, cause)
}
func (e *dialError) Unwrap() error { return e.err }

// call performs one operation: it sends req (nil for none) as JSON and
// decodes the answer into Resp, or returns the server's *Error.
func call[Resp any](ctx context.Context, c *Client, ep endpoint, req any) (Resp, error) {
	var zero Resp
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ep.timeout+clientGrace)
		defer cancel()
	}
	var body io.Reader
	if req != nil {
		data, err := json.Marshal(req)
		if err != nil {
			return zero, fmt.Errorf("%s: encode request: %w", ep.name, err)
		}
		body = bytes.NewReader(data)
	}
	hreq, err := http.NewRequestWithContext(ctx, ep.method, "http://sfvmm"+ep.path, body)
	if err != nil {
		return zero, fmt.Errorf("%s: %w", ep.name, err)
	}
	if body != nil {
		hreq.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(hreq)
	if err != nil {
		var de *dialError
		if errors.As(err, &de) {
			return zero, fmt.Errorf("%s: %w", ep.name, de)
		}
		if ctx.Err() != nil {
			return zero, fmt.Errorf("%s: no answer from sfvmm on %s: %w", ep.name, c.path, ctx.Err())
		}
		return zero, fmt.Errorf("%s: sfvmm on %s: %w", ep.name, c.path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return zero, fmt.Errorf("%s: read answer from sfvmm on %s: %w", ep.name, c.path, err)
	}
	if resp.StatusCode >= 300 {
		return zero, &Error{Op: ep.name, StatusCode: resp.StatusCode, Message: errorMessage(resp.StatusCode, data)}
	}
	if _, ok := any(zero).(noBody); ok {
		return zero, nil
	}
	var out Resp
	if err := json.Unmarshal(data, &out); err != nil {
		return zero, fmt.Errorf("%s: decode answer: %w", ep.name, err)
	}
	return out, nil
}

// errorMessage extracts the server's message from an error answer, falling
// back to the status text and whatever the body held.
func errorMessage(code int, data []byte) string {
	var eb errorBody
	if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
		return eb.Error
	}
	msg := fmt.Sprintf("%d %s", code, http.StatusText(code))
	if s := strings.TrimSpace(string(data)); s != "" {
		if len(s) > 200 {
			s = s[:200] + "..."
		}
		msg += ": " + s
	}
	return msg
}
