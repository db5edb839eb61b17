// Package api is sfvmm's control API: HTTP/JSON over a Unix socket, in the
// manner of Firecracker's. `sfvmm run --api-sock PATH` serves it with Serve;
// the `sfvmm snapshot` and `sfvmm fork` subcommands reach it with
// Dial.
//
// The package owns the wire format, the route table, request limits and the
// socket file's lifecycle. It knows nothing of KVM: the VMM implements
// Machine, and every operation is one call on it. It is not the guest-facing
// fork API (that is the paravirtual fork device), and its only access control
// is the socket's file mode (0600) and a peer-credential check on accept.
package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"time"
)

// Machine is what the control API drives. The VMM implements it; tests use a
// fake. Methods are called with a context bounded by the route's timeout and
// cancelled when the client goes away or the Server closes. Pause, Resume and
// Snapshot are never called concurrently with one another; Status may be
// called at any time, concurrently with anything, and must not block.
//
// An operation that is invalid in the machine's current state (snapshot of a
// stopped VM, say) should return an error wrapping ErrConflict; a request the
// machine rejects as malformed should wrap ErrInvalid.
type Machine interface {
	// Pause stops all vCPUs. Pausing a paused machine is not an error.
	Pause(ctx context.Context) error
	// Resume restarts all vCPUs. Resuming a running machine is not an error.
	Resume(ctx context.Context) error
	// Snapshot pauses the machine, writes its state to req.Dir and resumes
	// it unless req.StayPaused.
	Snapshot(ctx context.Context, req SnapshotRequest) (SnapshotInfo, error)
	// Status reports the machine's state.
	Status() Status
	// Fork forks the running machine into req.Clones clones.
	Fork(ctx context.Context, req ForkRequest) (ForkInfo, error)
	// Join waits for the clones of a ticket to end.
	Join(ctx context.Context, req TicketRequest) (JoinInfo, error)
	// Kill ends the clones of a ticket.
	Kill(ctx context.Context, req TicketRequest) error
}

// Errors a Machine wraps to choose the HTTP status of a failure. On the
// client side, errors.Is(err, ErrConflict) and errors.Is(err, ErrInvalid)
// hold for the corresponding server answers.
var (
	// ErrConflict: the operation is invalid in the machine's current state
	// (HTTP 409).
	ErrConflict = errors.New("operation conflicts with machine state")
	// ErrInvalid: the request itself is wrong (HTTP 400).
	ErrInvalid = errors.New("invalid request")
	// ErrInUse: Serve found another server listening on the socket.
	ErrInUse = errors.New("socket in use by a live server")
)

// Machine states reported in Status.State.
const (
	StateRunning = "running"
	StatePaused  = "paused"
	StateStopped = "stopped"
)

// Status is the answer to GET /status.
type Status struct {
	State       string `json:"state"` // StateRunning, StatePaused or StateStopped
	CPUs        int    `json:"cpus"`
	MemBytes    uint64 `json:"mem_bytes"`
	Kernel      string `json:"kernel"`
	UptimeNanos int64  `json:"uptime_nanos"`
	PID         int    `json:"pid"`
	// Exit says why the guest stopped (exit code, shutdown, error); empty
	// while it runs.
	Exit string `json:"exit,omitempty"`
	// CloneID is the machine's clone ID; 0 for a machine that is not a
	// clone.
	CloneID uint32 `json:"clone_id"`
	// Memtap is a clone's memory statistics.
	Memtap *MemtapStats `json:"memtap,omitempty"`
	// MemoryServerPID is the process ID of a parent's memory server, once
	// it has forked.
	MemoryServerPID int `json:"memory_server_pid,omitempty"`
}

// MemtapStats are a clone's memory counters (see package memtap).
type MemtapStats struct {
	Faults          uint64 `json:"faults"`
	PagesFetched    uint64 `json:"pages_fetched"`
	PagesDirect     uint64 `json:"pages_direct"` // of those, read from the parent's memory directly
	PagesZeroFilled uint64 `json:"pages_zero_filled"`
	PagesPrefetched uint64 `json:"pages_prefetched"`
	PagesExact      uint64 `json:"disk_blocks_fetched"` // pages of a clone's remote disk layers
	Requests        uint64 `json:"requests"`
	BytesReceived   uint64 `json:"bytes_received"`
	// FaultLatencyMicros[i] counts faults served in [2^(i-1), 2^i) µs.
	FaultLatencyMicros []uint64 `json:"fault_latency_histogram_us"`
}

// ForkRequest is the body of PUT /fork.
type ForkRequest struct {
	Clones int `json:"clones"`
}

func (r *ForkRequest) validate() error {
	if r.Clones < 1 {
		return fmt.Errorf("clones must be at least 1, not %d", r.Clones)
	}
	return nil
}

// ForkInfo is the answer to PUT /fork.
type ForkInfo struct {
	Ticket uint32   `json:"ticket"`
	Clones []uint32 `json:"clones"`
	// APISockets are the clones' control sockets, in the order of Clones
	// (empty when the parent serves no API).
	APISockets []string `json:"api_sockets,omitempty"`
	Descriptor string   `json:"descriptor"`
	// PausedNanos is how long the parent was paused for the fork.
	PausedNanos int64 `json:"paused_nanos"`
}

// TicketRequest is the body of PUT /join and PUT /kill.
type TicketRequest struct {
	Ticket uint32 `json:"ticket"`
}

func (r *TicketRequest) validate() error {
	if r.Ticket == 0 {
		return errors.New("ticket is required")
	}
	return nil
}

// JoinInfo is the answer to PUT /join.
type JoinInfo struct {
	// Failed counts the clones that did not end with sf_exit(0).
	Failed int `json:"failed"`
}

// SnapshotRequest is the body of PUT /snapshot.
type SnapshotRequest struct {
	// Dir is the directory to write, as an absolute path: the server's
	// working directory is not the client's. Client.Snapshot makes a
	// relative Dir absolute before sending it.
	Dir string `json:"dir"`
	// StayPaused leaves the machine paused after the snapshot.
	StayPaused bool `json:"stay_paused,omitempty"`
	// Overwrite allows writing into an existing snapshot directory.
	Overwrite bool `json:"overwrite,omitempty"`
}

func (r *SnapshotRequest) validate() error {
	if r.Dir == "" {
		return errors.New("dir is required")
	}
	if !filepath.IsAbs(r.Dir) {
		return fmt.Errorf("dir %q must be an absolute path", r.Dir)
	}
	r.Dir = filepath.Clean(r.Dir)
	return nil
}

// SnapshotInfo is the answer to PUT /snapshot.
type SnapshotInfo struct {
	Dir             string `json:"dir"`
	DescriptorBytes int64  `json:"descriptor_bytes"`
	MemoryBytes     int64  `json:"memory_bytes"`
	Pages           uint64 `json:"pages"`
	// PausedNanos is how long the guest was paused for the snapshot.
	PausedNanos int64 `json:"paused_nanos"`
	// WriteNanos is how long writing the snapshot took.
	WriteNanos int64 `json:"write_nanos"`
}

// validator is implemented by request types that check (and may normalise)
// themselves after decoding.
type validator interface{ validate() error }

// noBody is the request or response of a route that carries none; a
// response of this type is sent as 204 No Content.
type noBody struct{}

// maxBody bounds request and response bodies.
const maxBody = 1 << 20

// endpoint is one operation of the API as both sides see it. The timeout
// bounds the server's handling of a request (lock wait included); the
// client waits a little longer before giving up on a silent server.
type endpoint struct {
	name    string // operation name used in errors and logs
	method  string
	path    string
	timeout time.Duration
}

var (
	epStatus   = endpoint{"status", http.MethodGet, "/status", 10 * time.Second}
	epPause    = endpoint{"pause", http.MethodPut, "/pause", 10 * time.Second}
	epResume   = endpoint{"resume", http.MethodPut, "/resume", 10 * time.Second}
	epSnapshot = endpoint{"snapshot", http.MethodPut, "/snapshot", 5 * time.Minute}
	epFork     = endpoint{"fork", http.MethodPut, "/fork", time.Minute}
	epJoin     = endpoint{"join", http.MethodPut, "/join", time.Hour}
	epKill     = endpoint{"kill", http.MethodPut, "/kill", time.Minute}
)
