// Package agentapi is what a forking parent (sfvmm run) says to the host
// agents of its cluster (sfvmm agent, package cluster/agent), and the
// parent's side of it: the fork core's Launcher and Placer for a cluster.
//
// A parent talks to its own host's agent to be a clone family and to
// reserve slots (the agent holds the family's lease in the cluster's etcd
// for it, so that this package, which every VMM and clone links, needs no
// etcd client), and to the agent of each slot's host to launch a clone.
// Every call is HTTPS (HTTP/1.1) under mutual TLS with the cluster's
// certificates (package cluster/pki):
//
//	POST /v1/family   the response streams heartbeats while the family
//	                  lives; ending the request ends the family, and
//	                  every agent then kills its clones
//	POST /v1/reserve  ReserveRequest → ReserveReply
//	POST /v1/release  ReleaseRequest
//	POST /v1/launch   LaunchRequest; the response streams the clone's
//	                  console and log lines, heartbeats, and its end
//
// A launch's request is the clone's lifeline: when the parent cancels it
// (sf_kill) or dies, the agent kills the clone; when the agent or its
// host goes, the parent hears no heartbeat and counts the clone lost.
package agentapi

import (
	"encoding/json"
	"fmt"
	"regexp"
	"time"

	"github.com/sfvmm/sfvmm/vmm/fork"
)

// The agent's endpoints.
const (
	FamilyPath  = "/v1/family"
	ReservePath = "/v1/reserve"
	ReleasePath = "/v1/release"
	LaunchPath  = "/v1/launch"
)

// Heartbeat is how often an agent says a stream still lives; Silence is
// how long the other side waits without a word before it counts the
// stream's clone (or family) lost. A dead agent or host that still has a
// kernel resets the stream at once; Silence is for a host that is gone
// or cut off, and must outlast TCP's retransmissions on a lossy network
// whose hosts are short of CPU (a backoff of 200 ms doubling five times
// is 12.6 s).
const (
	Heartbeat = time.Second
	Silence   = 15 * time.Second
)

// MaxLaunch bounds a launch request: a descriptor, base64 in JSON.
const MaxLaunch = fork.MaxDescriptor*4/3 + 4096

// Host is an agent as the cluster knows it.
type Host struct {
	Name  string `json:"name"`
	Agent string `json:"agent"` // IP:port of its launch service
	Slots int    `json:"slots"`
}

// Placement says how a ticket's slots are spread over hosts: "spread"
// (each slot on the host with the most free) or "pack" (fill the host
// with the most free slots first).
type Placement string

const (
	Spread Placement = "spread"
	Pack   Placement = "pack"
)

// ParsePlacement reads a --placement value.
func ParsePlacement(s string) (Placement, error) {
	switch p := Placement(s); p {
	case Spread, Pack:
		return p, nil
	}
	return "", fmt.Errorf("placement %q: want spread or pack", s)
}

var familyName = regexp.MustCompile(`^[0-9a-f]{1,64}$`)

// CheckFamily says what is wrong with a family's name, or nil.
func CheckFamily(f string) error {
	if !familyName.MatchString(f) {
		return fmt.Errorf("family %q: want 1 to 64 lower-case hex digits", f)
	}
	return nil
}

// ReserveRequest asks for up to N slots for a ticket.
type ReserveRequest struct {
	Family    string    `json:"family"`
	Ticket    uint32    `json:"ticket"`
	N         int       `json:"n"`
	Placement Placement `json:"placement"`
}

// Check says what is wrong with q, or nil.
func (q *ReserveRequest) Check() error {
	if err := CheckFamily(q.Family); err != nil {
		return err
	}
	if q.Ticket == 0 || q.N < 1 || q.N > 1<<16 {
		return fmt.Errorf("ticket %d, %d slots", q.Ticket, q.N)
	}
	_, err := ParsePlacement(string(q.Placement))
	return err
}

// ReserveReply gives the host of each reserved slot, in clone order.
type ReserveReply struct {
	Hosts []Host `json:"hosts"`
}

// ReleaseRequest gives a ticket's slots back.
type ReleaseRequest struct {
	Family string `json:"family"`
	Ticket uint32 `json:"ticket"`
}

// Check says what is wrong with q, or nil.
func (q *ReleaseRequest) Check() error { return CheckFamily(q.Family) }

// LaunchRequest asks an agent to start one clone.
type LaunchRequest struct {
	Family     string `json:"family"`
	Ticket     uint32 `json:"ticket"`
	ID         uint32 `json:"id"`
	Descriptor []byte `json:"descriptor"`
}

// Check says what is wrong with q, or nil.
func (q *LaunchRequest) Check() error {
	if err := CheckFamily(q.Family); err != nil {
		return err
	}
	switch {
	case q.Ticket == 0:
		return fmt.Errorf("ticket 0")
	case q.ID == 0 || q.ID > 1<<16:
		return fmt.Errorf("clone ID %d: want 1 to 65536", q.ID)
	case len(q.Descriptor) == 0:
		return fmt.Errorf("no descriptor")
	}
	return nil
}

// Event is one line of a streamed response.
type Event struct {
	// Family names the family a /v1/family stream made (its first event).
	Family string `json:"family,omitempty"`
	// Out is a line the clone wrote to its stdout (its console), Err one
	// to its stderr (its log), each without the newline.
	Out string `json:"out,omitempty"`
	Err string `json:"err,omitempty"`
	// Alive is a heartbeat.
	Alive bool `json:"alive,omitempty"`
	// End says the clone (or family) has ended; Error is how, empty when
	// a clone ended well (sf_exit(0) or power off).
	End   bool   `json:"end,omitempty"`
	Error string `json:"error,omitempty"`
}

// Encode is e as one line of a stream.
func (e Event) Encode() []byte {
	b, _ := json.Marshal(e)
	return append(b, '\n')
}
