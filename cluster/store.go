// Package cluster is sfvmm's cluster state: which hosts are up, how many
// clone slots each offers, and which families (forking parents) hold
// which slots. It lives in etcd (SnowFlock's SFMD, on a store that already
// does consensus and leases well), under /sfvmm/:
//
//	hosts/NAME                 Host, under the agent's lease
//	families/FAMILY            the parent's host, under the parent's lease
//	slots/HOST/FAMILY/TICKET   slots reserved, under the parent's lease
//
// A lease ends when its holder stops renewing it (it died, or its host did,
// or the network cut it off): a dead agent's host leaves the cluster and a
// dead parent's reservations return, with nobody cleaning up after them.
// Slots reserved on a host that has left count for nothing.
package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sfvmm/sfvmm/cluster/agentapi"
	"github.com/sfvmm/sfvmm/cluster/pki"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

const (
	prefix       = "/sfvmm/"
	hostsKey     = prefix + "hosts/"
	familiesKey  = prefix + "families/"
	slotsKey     = prefix + "slots/"
	dialTimeout  = 5 * time.Second
	requestLimit = 5 * time.Second
)

// LeaseTTL is how long, in seconds, a member that stopped answering still
// counts as alive unless its store is told otherwise (SetLeaseTTL): an
// agent's host leaves and a parent's clones are killed within this long
// of their last renewal. It is also how long a busy host may go without
// renewing before it loses its clones for nothing: with 5 s, a nested
// sandbox running a parent, eight clones and four agents on one CPU lost
// every agent's lease in most runs.
const LeaseTTL = 15

// The lease TTLs SetLeaseTTL takes: below 2 s etcd's own minimum (1.5 s
// with its default timing) would lengthen it unasked; above an hour a
// lost host's clones would run on unnoticed for too long to be useful.
const (
	minLeaseTTL = 2
	maxLeaseTTL = 3600
)

// Host is an agent as the cluster knows it.
type Host = agentapi.Host

// Store is a connection to the cluster's etcd.
type Store struct {
	c   *clientv3.Client
	ttl int // of the leases it starts, in seconds
}

// Connect reaches the etcd cluster at endpoints ("https://host:port"),
// as member id, waiting up to wait for its first answer: a wrong address
// or certificate is an error after that long, since etcd's client retries
// every failed connection until then.
func Connect(endpoints []string, id *pki.Identity, wait time.Duration) (*Store, error) {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: dialTimeout,
		TLS:         id.ClientTLS(""),
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ","), err)
	}
	// clientv3.New does not wait for a connection: ask once, so that a
	// wrong address or certificate is an error here, not later.
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := c.Get(ctx, hostsKey, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		c.Close()
		return nil, fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ","), err)
	}
	return &Store{c: c, ttl: LeaseTTL}, nil
}

// CheckLeaseTTL says whether a lease of sec seconds can be asked for.
func CheckLeaseTTL(sec int) error {
	if sec < minLeaseTTL || sec > maxLeaseTTL {
		return fmt.Errorf("lease TTL %d s: must be %d to %d", sec, minLeaseTTL, maxLeaseTTL)
	}
	return nil
}

// SetLeaseTTL sets the TTL, in seconds, of the leases s starts: its
// agent's and the families it registers. A shorter one finds a lost host
// sooner; a longer one keeps a busy host's clones. Call it before s is
// shared.
func (s *Store) SetLeaseTTL(sec int) error {
	if err := CheckLeaseTTL(sec); err != nil {
		return err
	}
	s.ttl = sec
	return nil
}

// Close ends the connection; leases it holds run out.
func (s *Store) Close() error { return s.c.Close() }

// Session is a lease kept alive while its holder lives.
type Session struct{ s *concurrency.Session }

// NewSession starts a lease of s's TTL.
func (s *Store) NewSession() (*Session, error) {
	cs, err := concurrency.NewSession(s.c, concurrency.WithTTL(s.ttl))
	if err != nil {
		return nil, fmt.Errorf("etcd lease: %w", err)
	}
	return &Session{cs}, nil
}

// Done is closed when the lease has ended (it could not be renewed).
func (ss *Session) Done() <-chan struct{} { return ss.s.Done() }

// Close revokes the lease: what it holds goes at once.
func (ss *Session) Close() error { return ss.s.Close() }

// Join puts h in the cluster for as long as ss lasts.
func (s *Store) Join(ss *Session, h Host) error {
	if err := pki.CheckName(h.Name); err != nil {
		return err
	}
	if h.Slots < 0 {
		return fmt.Errorf("host %s: %d slots", h.Name, h.Slots)
	}
	b, _ := json.Marshal(h)
	ctx, cancel := context.WithTimeout(context.Background(), requestLimit)
	defer cancel()
	// A name is one host's: a second agent under it is refused while the
	// first one's lease lasts.
	r, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(hostsKey+h.Name), "=", 0)).
		Then(clientv3.OpPut(hostsKey+h.Name, string(b), clientv3.WithLease(ss.s.Lease()))).Commit()
	if err != nil {
		return fmt.Errorf("join the cluster as %s: %w", h.Name, err)
	}
	if !r.Succeeded {
		return fmt.Errorf("join the cluster as %s: another agent of that name is in the cluster", h.Name)
	}
	return nil
}

// Hosts lists the hosts in the cluster, by name.
func (s *Store) Hosts(ctx context.Context) ([]Host, error) {
	r, err := s.c.Get(ctx, hostsKey, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	hosts, _ := decodeHosts(r.Kvs)
	return hosts, nil
}

func decodeHosts(kvs []*mvccpb.KeyValue) ([]Host, map[string]Host) {
	var hosts []Host
	byName := map[string]Host{}
	for _, kv := range kvs {
		var h Host
		if json.Unmarshal(kv.Value, &h) != nil || h.Name != strings.TrimPrefix(string(kv.Key), hostsKey) {
			continue // not an agent's: ignored, never trusted
		}
		hosts = append(hosts, h)
		byName[h.Name] = h
	}
	return hosts, byName
}

// Family is a forking parent's presence in the cluster: its reservations
// live under its lease, and agents kill its clones when it is gone.
type Family struct {
	s    *Store
	ss   *Session
	Name string
}

// NewFamily registers a family from host, under a new lease.
func (s *Store) NewFamily(name, host string) (*Family, error) {
	ss, err := s.NewSession()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestLimit)
	defer cancel()
	if _, err := s.c.Put(ctx, familiesKey+name, host, clientv3.WithLease(ss.s.Lease())); err != nil {
		ss.Close()
		return nil, fmt.Errorf("register clone family: %w", err)
	}
	return &Family{s: s, ss: ss, Name: name}, nil
}

// Close ends the family: its reservations return and agents kill its
// clones.
func (f *Family) Close() error { return f.ss.Close() }

// Done is closed if the family's lease ends.
func (f *Family) Done() <-chan struct{} { return f.ss.Done() }

// ErrNoSlots: no host of the cluster has a free slot.
var ErrNoSlots = errors.New("no free clone slots in the cluster")

// Reserve reserves up to n slots for ticket across the cluster's hosts
// and returns the host of each slot, in clone order (fewer than n if the
// cluster has fewer free).
func (f *Family) Reserve(ticket uint32, n int, p agentapi.Placement) ([]Host, error) {
	ctx, cancel := context.WithTimeout(context.Background(), requestLimit)
	defer cancel()
	for {
		hr, err := f.s.c.Get(ctx, hostsKey, clientv3.WithPrefix())
		if err != nil {
			return nil, fmt.Errorf("reserve slots: %w", err)
		}
		sr, err := f.s.c.Get(ctx, slotsKey, clientv3.WithPrefix(), clientv3.WithRev(hr.Header.Revision))
		if err != nil {
			return nil, fmt.Errorf("reserve slots: %w", err)
		}
		hosts, byName := decodeHosts(hr.Kvs)
		free := map[string]int{}
		for _, h := range hosts {
			free[h.Name] = h.Slots
		}
		for _, kv := range sr.Kvs {
			host, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), slotsKey), "/")
			if k, err := strconv.Atoi(string(kv.Value)); err == nil {
				if _, ok := free[host]; ok {
					free[host] -= k
				}
			}
		}
		order := place(free, n, p)
		if len(order) == 0 {
			return nil, ErrNoSlots
		}
		count := map[string]int{}
		for _, h := range order {
			count[h]++
		}
		var puts []clientv3.Op
		for h, k := range count {
			puts = append(puts, clientv3.OpPut(reservationKey(h, f.Name, ticket), strconv.Itoa(k), clientv3.WithLease(f.ss.s.Lease())))
		}
		// Reserved only if nobody joined, changed or reserved meanwhile;
		// otherwise read again and place again.
		rev := hr.Header.Revision
		r, err := f.s.c.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(hostsKey).WithPrefix(), "<", rev+1),
			clientv3.Compare(clientv3.ModRevision(slotsKey).WithPrefix(), "<", rev+1),
		).Then(puts...).Commit()
		if err != nil {
			return nil, fmt.Errorf("reserve slots: %w", err)
		}
		if r.Succeeded {
			out := make([]Host, len(order))
			for i, h := range order {
				out[i] = byName[h]
			}
			return out, nil
		}
	}
}

// Release gives ticket's slots back.
func (f *Family) Release(ticket uint32) error {
	ctx, cancel := context.WithTimeout(context.Background(), requestLimit)
	defer cancel()
	hr, err := f.s.c.Get(ctx, slotsKey, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return err
	}
	suffix := "/" + f.Name + "/" + strconv.FormatUint(uint64(ticket), 10)
	for _, kv := range hr.Kvs {
		if strings.HasSuffix(string(kv.Key), suffix) {
			if _, err := f.s.c.Delete(ctx, string(kv.Key)); err != nil {
				return err
			}
		}
	}
	return nil
}

func reservationKey(host, family string, ticket uint32) string {
	return slotsKey + host + "/" + family + "/" + strconv.FormatUint(uint64(ticket), 10)
}

// Reserved says how many slots family holds for ticket on host.
func (s *Store) Reserved(ctx context.Context, host, family string, ticket uint32) (int, error) {
	r, err := s.c.Get(ctx, reservationKey(host, family, ticket))
	if err != nil {
		return 0, err
	}
	if len(r.Kvs) == 0 {
		return 0, nil
	}
	return strconv.Atoi(string(r.Kvs[0].Value))
}

// Reservation is a family's slots for a ticket on a host.
type Reservation struct {
	Host, Family string
	Ticket       uint32
	Slots        int
}

// Reservations lists every slot reservation in the cluster.
func (s *Store) Reservations(ctx context.Context) ([]Reservation, error) {
	r, err := s.c.Get(ctx, slotsKey, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	var out []Reservation
	for _, kv := range r.Kvs {
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), slotsKey), "/")
		if len(parts) != 3 {
			continue
		}
		t, err1 := strconv.ParseUint(parts[2], 10, 32)
		n, err2 := strconv.Atoi(string(kv.Value))
		if err1 == nil && err2 == nil {
			out = append(out, Reservation{Host: parts[0], Family: parts[1], Ticket: uint32(t), Slots: n})
		}
	}
	return out, nil
}

// WatchFamily returns a channel closed once family is gone from the
// cluster (its parent ended or stopped renewing its lease), or ctx ends.
func (s *Store) WatchFamily(ctx context.Context, family string) <-chan struct{} {
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		for ctx.Err() == nil {
			r, err := s.c.Get(ctx, familiesKey+family)
			if err == nil && len(r.Kvs) == 0 {
				return
			}
			if err == nil {
				w := s.c.Watch(ctx, familiesKey+family, clientv3.WithRev(r.Header.Revision+1))
				for wr := range w {
					for _, ev := range wr.Events {
						if ev.Type == clientv3.EventTypeDelete {
							return
						}
					}
				}
			}
			// The watch broke (etcd unreachable): look again shortly.
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return gone
}

// place chooses a host for each of up to n slots among free's.
func place(free map[string]int, n int, p agentapi.Placement) []string {
	type hf struct {
		name string
		free int
	}
	var hs []hf
	for h, k := range free {
		if k > 0 {
			hs = append(hs, hf{h, k})
		}
	}
	byMostFree := func(a, b hf) int {
		if c := cmp.Compare(b.free, a.free); c != 0 {
			return c
		}
		return cmp.Compare(a.name, b.name)
	}
	var out []string
	switch p {
	case agentapi.Pack:
		slices.SortFunc(hs, byMostFree)
		for _, h := range hs {
			for ; h.free > 0 && len(out) < n; h.free-- {
				out = append(out, h.name)
			}
		}
	default:
		for len(out) < n && len(hs) > 0 {
			slices.SortFunc(hs, byMostFree)
			if hs[0].free == 0 {
				break
			}
			out = append(out, hs[0].name)
			hs[0].free--
		}
	}
	return out
}
