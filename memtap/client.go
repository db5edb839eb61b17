package memtap

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/sfvmm/sfvmm/memtap/internal/helper"
	"github.com/sfvmm/sfvmm/memtap/internal/pages"
	"github.com/sfvmm/sfvmm/memtap/server"
	"github.com/sfvmm/sfvmm/memtap/uffd"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"golang.org/x/sys/unix"
)

// Key is a clone family's shared secret (wire.Key).
type Key = wire.Key

// PageSet is a set of pages of one RAM region, as runs (the VMM's
// snapshot.Bitmap is one).
type PageSet = pages.Set

// Region is one RAM region of the child, matching the parent's region of
// the same index.
type Region struct {
	// Host is the child's mapping of the region: fresh private anonymous
	// memory, page aligned, a whole number of pages, never touched.
	Host []byte
	// Populated says which pages the parent had at the fork; the others
	// are zero-filled locally. Nil means every page.
	Populated PageSet
	// Exact: each page is fetched as it is touched, none ahead (a disk
	// layer, which its reader reads exactly as far as the guest asks);
	// Stats.PagesExact counts those fetched.
	Exact bool
}

// Config says what to fill and from where.
type Config struct {
	Regions []Region
	// Network and Address reach the memory server ("tcp", "host:port";
	// "unix", path).
	Network, Address string
	Key              Key
	// Window is the pages fetched per fault, from the faulting one on
	// (default 16). MaxWindow caps it as it grows on sequential faults
	// (default and maximum wire.MaxBatch, 256). Window 1 and MaxWindow 1
	// turn prefetch off.
	Window, MaxWindow int
	// Timeout bounds connecting, and how long requests wait with nothing
	// at all heard from the server: no reply and no keep-alive (default
	// 5 s; three times that for a server on another host, "tcp"). A
	// server that keeps sending keep-alives is waited for.
	Timeout time.Duration
	// StuckAfter bounds how long a server that keeps sending keep-alives
	// may answer none of the requests waiting (default 60 s).
	StuckAfter time.Duration
	// KillAfter is how long the helper waits for the VMM to take a fatal
	// error before it kills the VMM (default 2 s).
	KillAfter time.Duration
	// HelperPath is the binary to run as the helper; empty means the
	// running executable, which must call Main.
	HelperPath string
	// Parent, for a child on its parent's host, lets memtap read pages
	// straight from the parent's memory (see ParentMemory); nil: every
	// page comes through the server. Start passes the files on to the
	// helper; the caller still closes them.
	Parent *ParentMemory
}

// ParentMemory is the parent's guest RAM as a child on the same host can
// read it, which saves the round trip through the memory server: a fault
// costs two reads from the helper instead.
//
// A page read there is installed only if, read afterwards, the parent's
// page table still shows the memory server's write protection on it
// (pagemap's uffd-wp bit): the parent cannot write a protected page, and
// the server lifts a page's protection only once it has saved the page
// as it was at the fork, so a page still protected after the read was
// read as it was at the fork. Any other page (written by the parent since
// the fork; every page once the server is gone, since the kernel drops its
// protection with it) comes from the server, as without ParentMemory, and
// a dead server is noticed as before.
type ParentMemory struct {
	Mem     *os.File // the parent's /proc/PID/mem
	Pagemap *os.File // the parent's /proc/PID/pagemap
	Bases   []uint64 // each region's address in the parent
}

// OpenParent opens the memory of process pid, whose guest RAM regions
// start at bases, for Config.Parent. It needs ptrace access to pid (root,
// or a parent that allows it).
func OpenParent(pid int, bases []uint64) (*ParentMemory, error) {
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, fmt.Errorf("parent memory: %w", err)
	}
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		mem.Close()
		return nil, fmt.Errorf("parent memory: %w", err)
	}
	return &ParentMemory{Mem: mem, Pagemap: pm, Bases: bases}, nil
}

// Close closes the files.
func (p *ParentMemory) Close() error { return errors.Join(p.Mem.Close(), p.Pagemap.Close()) }

// Buckets is the number of fault-latency histogram buckets.
const Buckets = 24

// Stats are a client's counters.
type Stats struct {
	Faults          uint64 // fault messages handled
	PagesFetched    uint64 // pages with data from the parent: from the server, or read directly
	PagesDirect     uint64 // of those, pages read from the parent's memory directly (ParentMemory)
	PagesZeroFilled uint64 // pages filled with UFFDIO_ZEROPAGE: never populated, or zero at the fork
	PagesPrefetched uint64 // pages with data installed before anything faulted on them
	PagesExact      uint64 // pages with data of Exact regions (disk layers), also in PagesFetched
	Requests        uint64 // requests sent to the server
	BytesReceived   uint64 // bytes read from the server, handshake included
	// With multicast (mcdist): PagesMulticast data pages installed from
	// the family's group (also counted in PagesFetched), of which
	// PagesFromSiblings had not been asked for by this clone; PagesRetried
	// pages asked again on the stream after they did not come on the
	// group; DatagramsForged and DatagramsReplayed datagrams dropped for
	// failing authentication (another family's, or forged) or for a
	// sequence number already seen; BytesMulticast datagram bytes read;
	// MulticastOff clients that left the group because nothing came on
	// it (a network that drops multicast) and asked by unicast after.
	PagesMulticast    uint64
	PagesFromSiblings uint64
	PagesRetried      uint64
	DatagramsForged   uint64
	DatagramsReplayed uint64
	BytesMulticast    uint64
	MulticastOff      uint64
	// ServerStarved counts the times a server on this host was silent for
	// longer than Config.Timeout while its process ran or waited for a
	// CPU, and was waited for.
	ServerStarved uint64
	// FaultLatency[i] counts faults served in [2^(i-1), 2^i) µs, from the
	// helper's reading of the fault to the page being installed (bucket
	// 0: under 1 µs; the last bucket has everything above).
	FaultLatency [Buckets]uint64
}

// Add adds t to s, for totals over several clients.
func (s *Stats) Add(t Stats) {
	s.Faults += t.Faults
	s.PagesFetched += t.PagesFetched
	s.PagesDirect += t.PagesDirect
	s.PagesZeroFilled += t.PagesZeroFilled
	s.PagesPrefetched += t.PagesPrefetched
	s.PagesExact += t.PagesExact
	s.Requests += t.Requests
	s.BytesReceived += t.BytesReceived
	s.PagesMulticast += t.PagesMulticast
	s.PagesFromSiblings += t.PagesFromSiblings
	s.PagesRetried += t.PagesRetried
	s.DatagramsForged += t.DatagramsForged
	s.DatagramsReplayed += t.DatagramsReplayed
	s.BytesMulticast += t.BytesMulticast
	s.MulticastOff += t.MulticastOff
	s.ServerStarved += t.ServerStarved
	for i := range s.FaultLatency {
		s.FaultLatency[i] += t.FaultLatency[i]
	}
}

// Percentile returns the upper bound of the histogram bucket holding the
// p-th percentile (0 < p <= 100) of fault latencies, or 0 with no faults.
func (s *Stats) Percentile(p float64) time.Duration {
	var total uint64
	for _, n := range s.FaultLatency {
		total += n
	}
	if total == 0 {
		return 0
	}
	want := uint64(float64(total)*p/100 + 0.5)
	var seen uint64
	for i, n := range s.FaultLatency {
		seen += n
		if seen >= want && n > 0 {
			return time.Duration(1<<i) * time.Microsecond
		}
	}
	return time.Duration(1<<(Buckets-1)) * time.Microsecond
}

// bucket is the histogram bucket of a latency.
func bucket(d time.Duration) int {
	return min(bits.Len64(uint64(d/time.Microsecond)), Buckets-1)
}

// counters is the shared-memory layout of Stats, written by the helper.
type counters struct {
	faults, fetched, direct, zeroFilled, prefetched, exact, requests, bytes atomic.Uint64
	multicast, siblings, retried, forged, replayed, mbytes, mcOff           atomic.Uint64
	starved                                                                 atomic.Uint64
	hist                                                                    [Buckets]atomic.Uint64
}

func (c *counters) stats() Stats {
	s := Stats{
		Faults: c.faults.Load(), PagesFetched: c.fetched.Load(), PagesDirect: c.direct.Load(), PagesZeroFilled: c.zeroFilled.Load(),
		PagesPrefetched: c.prefetched.Load(), PagesExact: c.exact.Load(), Requests: c.requests.Load(), BytesReceived: c.bytes.Load(),
		PagesMulticast: c.multicast.Load(), PagesFromSiblings: c.siblings.Load(), PagesRetried: c.retried.Load(),
		DatagramsForged: c.forged.Load(), DatagramsReplayed: c.replayed.Load(), BytesMulticast: c.mbytes.Load(),
		MulticastOff: c.mcOff.Load(), ServerStarved: c.starved.Load(),
	}
	for i := range s.FaultLatency {
		s.FaultLatency[i] = c.hist[i].Load()
	}
	return s
}

// Client is memtap serving one child's RAM.
type Client struct {
	proc    *helper.Proc
	u       *uffd.FD // the VMM's reference: faults stay pending if the helper dies
	regions []Region
	c       *helper.Counters[counters] // shared with the helper

	done    chan struct{} // closed on a fatal error or the helper's exit
	err     error         // why; set before done is closed
	closing atomic.Bool
	mu      sync.Mutex // serialises Fence and Close
	fenced  bool       // guarded by mu
}

// Messages between the VMM and the client helper.
type (
	helperConfig struct {
		Regions          []pages.Region
		Network, Address string
		Key              Key
		Window, Max      int
		Timeout, Kill    time.Duration
		StuckAfter       time.Duration
		VMM              int // pid, killed if it does not acknowledge a fatal error
		// Direct: the parent's mem and pagemap files come with the
		// config; ParentBases are the regions' addresses there.
		Direct      bool
		ParentBases []uint64
	}
	// note goes from the helper to the VMM.
	note struct {
		Ready bool
		Fatal string
	}
	// ackMsg goes from the VMM to the helper once it has a fatal error.
	ackMsg struct{}
)

// Start registers the child's RAM for missing-page faults, starts the
// helper that serves them and returns once it has connected to the memory
// server and authenticated. From then on the VM may run.
func Start(cfg Config) (*Client, error) {
	if cfg.Window <= 0 {
		cfg.Window = 16
	}
	if cfg.MaxWindow <= 0 {
		cfg.MaxWindow = wire.MaxBatch
	}
	cfg.MaxWindow = min(cfg.MaxWindow, wire.MaxBatch)
	cfg.Window = min(cfg.Window, cfg.MaxWindow)
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Timeout < 2*wire.AliveInterval {
		// A keep-alive a little late would fail a live server.
		return nil, fmt.Errorf("start memtap: timeout %v: at least twice the server's keep-alive interval (%v)", cfg.Timeout, wire.AliveInterval)
	}
	if cfg.KillAfter <= 0 {
		cfg.KillAfter = 2 * time.Second
	}
	if cfg.StuckAfter <= 0 {
		cfg.StuckAfter = 60 * time.Second
	}
	if err := pages.CheckCount(len(cfg.Regions)); err != nil {
		return nil, fmt.Errorf("start memtap: %w", err)
	}
	hc := helperConfig{
		Network: cfg.Network, Address: cfg.Address, Key: cfg.Key, Window: cfg.Window, Max: cfg.MaxWindow,
		Timeout: cfg.Timeout, Kill: cfg.KillAfter, StuckAfter: cfg.StuckAfter, VMM: os.Getpid(),
	}
	var parentFds []int
	if pm := cfg.Parent; pm != nil {
		if len(pm.Bases) != len(cfg.Regions) {
			return nil, fmt.Errorf("start memtap: parent memory has %d regions, the child %d", len(pm.Bases), len(cfg.Regions))
		}
		for i, b := range pm.Bases {
			if b%uffd.PageSize != 0 {
				return nil, fmt.Errorf("start memtap: parent region %d at %#x is not page aligned", i, b)
			}
		}
		hc.Direct, hc.ParentBases = true, pm.Bases
		parentFds = []int{int(pm.Mem.Fd()), int(pm.Pagemap.Fd())}
	}
	for i, r := range cfg.Regions {
		reg, err := pages.Check(r.Host)
		if err == nil {
			reg.Runs = []pages.Run{{Start: 0, N: reg.Pages}}
			if r.Populated != nil {
				reg.Runs, err = pages.RunsOf(r.Populated, reg.Pages)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("start memtap: region %d: %w", i, err)
		}
		reg.Exact = r.Exact
		hc.Regions = append(hc.Regions, reg)
	}

	u, err := uffd.New(unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("start memtap: %w", err)
	}
	c := &Client{u: u, regions: cfg.Regions, done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			c.release()
		}
	}()
	if _, err := u.API(0); err != nil {
		return nil, fmt.Errorf("start memtap: %w", err)
	}
	for i, r := range hc.Regions {
		ioctls, err := u.Register(uintptr(r.Base), uintptr(r.Pages*uffd.PageSize), uffd.ModeMissing)
		if err != nil {
			return nil, fmt.Errorf("start memtap: region %d: %w", i, err)
		}
		if want := uint64(uffd.IoctlCopy | uffd.IoctlZeropage | uffd.IoctlWake); ioctls&want != want {
			return nil, fmt.Errorf("start memtap: region %d: kernel offers ioctls %#x, want %#x", i, ioctls, want)
		}
	}
	shared, sf, err := helper.NewCounters[counters]()
	if err != nil {
		return nil, fmt.Errorf("start memtap: %w", err)
	}
	c.c = shared
	ufile, err := dupFile(u.Fd(), "userfaultfd")
	if err != nil {
		sf.Close()
		return nil, fmt.Errorf("start memtap: %w", err)
	}
	c.proc, err = helper.Spawn(cfg.HelperPath, "client", sf, ufile)
	sf.Close()
	ufile.Close()
	if err != nil {
		return nil, fmt.Errorf("start memtap: %w", err)
	}
	err = c.proc.Ctl.Send(hc, parentFds...)
	if cfg.Parent != nil {
		runtime.KeepAlive(cfg.Parent.Mem)
		runtime.KeepAlive(cfg.Parent.Pagemap)
	}
	if err != nil {
		return nil, fmt.Errorf("start memtap: %w", err)
	}
	// The helper answers Ready or Fatal within connectBound, and a helper
	// that dies closes the socket at once; helperStart covers starting
	// it, which takes seconds on a loaded host (many clones starting at
	// once on few CPUs).
	ready := make(chan error, 1)
	go func() {
		var n note
		if _, err := c.proc.Ctl.Recv(&n); err != nil {
			ready <- fmt.Errorf("memtap helper: %w", err)
			return
		}
		if !n.Ready {
			ready <- errors.New(n.Fatal)
			return
		}
		ready <- nil
	}()
	select {
	case err := <-ready:
		if err != nil {
			return nil, fmt.Errorf("start memtap: %w", err)
		}
	case <-time.After(connectBound(cfg.Network, cfg.Timeout, cfg.StuckAfter) + helperStart):
		return nil, fmt.Errorf("start memtap: no answer from the helper in %v", connectBound(cfg.Network, cfg.Timeout, cfg.StuckAfter)+helperStart)
	}
	ok = true
	go c.watch(c.proc)
	return c, nil
}

// helperStart bounds the start of a helper that neither answers nor dies.
const helperStart = 30 * time.Second

func dupFile(fd int, name string) (*os.File, error) {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", name, err)
	}
	return os.NewFile(uintptr(d), name), nil
}

// watch waits for the helper's fatal error or exit and reports it.
func (c *Client) watch(proc *helper.Proc) {
	var n note
	_, err := proc.Ctl.Recv(&n)
	switch {
	case err == nil && n.Fatal != "":
		// Acknowledge first: the helper kills this process if we are too
		// slow to take the error.
		proc.Ctl.Send(ackMsg{})
		c.err = fmt.Errorf("memtap: %s", n.Fatal)
	case c.closing.Load():
		c.err = errors.New("memtap: closed")
	case err != nil:
		c.err = fmt.Errorf("memtap: helper exited: %w", err)
	default:
		c.err = errors.New("memtap: unexpected message from the helper")
	}
	close(c.done)
}

// Done is closed when the client has failed (or was closed). Guest RAM
// pages not yet filled will then never be filled: the VMM must end the
// child (see the package comment).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why Done was closed, or nil while it is open.
func (c *Client) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	var s Stats
	c.c.Read(func(c *counters) { s = c.stats() })
	return s
}

// Fence revokes all access to the child's RAM and wakes every thread
// blocked on a missing page. Call it after a failure, to tear the child
// down: a vCPU's KVM_RUN then fails with EFAULT, and a Go access to guest
// RAM panics (a fault; see runtime/debug.SetPanicOnFault). Nothing is ever
// read from a page that was not filled.
func (c *Client) Fence() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fenced || c.u == nil {
		return nil
	}
	c.fenced = true
	var errs []error
	for _, r := range c.regions {
		if err := unix.Mprotect(r.Host, unix.PROT_NONE); err != nil {
			errs = append(errs, fmt.Errorf("fence: mprotect: %w", err))
		}
	}
	for _, r := range c.regions {
		if err := c.u.Wake(uintptr(unsafe.Pointer(&r.Host[0])), uintptr(len(r.Host))); err != nil {
			errs = append(errs, fmt.Errorf("fence: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Close stops the helper and unregisters the child's RAM. Call it only when
// the VM no longer runs (or after Fence): a page not yet filled reads as
// zero once the RAM is unregistered.
func (c *Client) Close() error {
	c.closing.Store(true)
	err := c.release()
	<-c.done
	return err
}

func (c *Client) release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	if c.proc != nil {
		errs = append(errs, c.proc.Stop(5*time.Second))
		c.proc = nil
	}
	if c.u != nil {
		if !c.fenced {
			for _, r := range c.regions {
				c.u.Unregister(uintptr(unsafe.Pointer(&r.Host[0])), uintptr(len(r.Host)))
			}
		}
		errs = append(errs, c.u.Close())
		c.u = nil
	}
	if c.c != nil {
		c.c.Close() // after the helper's exit: its last figures stay readable
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close memtap: %w", err)
	}
	return nil
}

// Main runs a memtap helper (the client's fault handler or the memory
// server) when this process was started as one, and then exits; otherwise
// it returns at once. The VMM's main, and TestMain of any test that starts
// memtap or a memory server, must call it before anything else.
func Main() {
	server.HelperMain()
	helper.Main("client", runHelper)
}
