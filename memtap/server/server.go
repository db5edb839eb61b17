// Package server is the parent's memory server: it freezes a running VM's
// guest RAM at the fork instant and serves those pages, as they were then,
// to the clone family's memtap clients over stream sockets, while the parent
// runs on and writes.
//
// # Freezing: copy-before-write with userfaultfd write-protect
//
// Arm, while the parent runs, registers guest RAM with a userfaultfd in
// write-protect mode and write-protects the pages present: it walks page
// tables (with transparent huge pages, 2 MiB at a time) and copies nothing.
// Until Seal, a write to a protected page only records the page and lifts
// its protection. Seal, called while the parent's vCPUs are paused, protects
// again what was written or populated since Arm, so the pause does not grow
// with RAM (Freeze does both, all in the pause). When the parent then first
// writes a page (a vCPU through KVM, or the VMM's own device code), the
// write faults; the handler copies the old page into the server's private
// store and lifts the protection, and the write lands. A page is served from
// the private store when it has a copy there, and otherwise from the live
// page, which is still protected and so still as it was. Pages the populated
// set leaves out are served as absent (zero): the parent never had them, and
// a later write to them is not the image's.
//
// # A helper process
//
// Both the write-protect handler and the page server run in a helper
// process (the VMM binary re-executed; memtap.Main must be the first thing
// the VMM's main calls), never as goroutines of the VMM. A parent thread
// that writes a protected page from Go code blocks in the kernel holding
// its Go P; if the handler needed a P of the same process, GOMAXPROCS such
// writers would starve it and the parent would deadlock (see memtap's
// package comment). The helper reads the parent's memory with
// process_vm_readv and lifts protections through the userfaultfd it was
// handed; it never maps guest RAM. The VMM keeps no copy of that
// userfaultfd, so if the helper dies the kernel releases it: every
// protection is dropped and the parent runs on unhindered (the children lose
// their server and fail).
//
// Clients authenticate with the family's key (package wire); one that
// fails, sends garbage or asks for pages outside the image is refused,
// counted and disconnected, and no client can stall another: each has its
// own connection, goroutine and write deadline.
//
// One image exists at a time per Server; closing it drops the saved pages.
// It is not the child's side (package memtap) nor multicast (mcdist).
package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sfvmm/sfvmm/memtap/internal/helper"
	"github.com/sfvmm/sfvmm/memtap/internal/pages"
	"github.com/sfvmm/sfvmm/memtap/uffd"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"golang.org/x/sys/unix"
)

// PageSet is a set of pages of one RAM region, as runs (the VMM's
// snapshot.Bitmap is one).
type PageSet = pages.Set

// Region is one RAM region of the parent.
type Region struct {
	// Host is the parent's mapping of the region: private anonymous
	// memory, page aligned, a whole number of pages.
	Host []byte
	// Populated says which pages the parent has at the fork: the pages
	// present in memory, which are the ones write protection can guard.
	// The others are served as absent (zero). Nil: Freeze finds them with
	// mincore(2). (A page swapped out is not resident to mincore; hosts
	// that swap guest RAM need a set built from /proc/self/pagemap.)
	Populated PageSet
	// Frozen: the region is a read-only mapping of something that does
	// not change from Seal on (a frozen disk layer's file): it is served
	// as it is, without write protection, which such a mapping cannot
	// take.
	Frozen bool
}

// Config tunes a Server. The zero value is usable.
type Config struct {
	// HelperPath is the binary to run as the helper; empty means the
	// running executable (os.Executable), which must call memtap.Main.
	HelperPath string
	// HandshakeTimeout bounds a client's handshake (default 15 s: a TLS
	// handshake over a lossy link waits on TCP's retransmissions; memtap
	// allows its clients three times its 5 s silence bound for it).
	HandshakeTimeout time.Duration
	// WriteTimeout bounds the sending of one reply: a client that stops
	// reading is disconnected (default 10 s).
	WriteTimeout time.Duration
}

// Stats are the server's counters, cumulative over its images.
type Stats struct {
	Clients      uint64 // clients that authenticated
	Connected    uint64 // clients connected now
	AuthFailures uint64 // connections refused for a wrong key or a bad handshake
	BadRequests  uint64 // connections dropped for a malformed or out-of-range request
	Requests     uint64 // page requests served
	PagesSent    uint64 // pages sent with data
	PagesEmpty   uint64 // pages answered as zero or absent, with no data
	BytesSent    uint64 // bytes written to clients
	WriteFaults  uint64 // write-protect faults of the parent (one a signal interrupted counts again)
	PagesSaved   uint64 // pages copied before the parent's first write
	// PagesMulticast and BytesMulticast: pages and bytes sent to the
	// family's multicast group (mcdist), counted once however many clones
	// install them.
	PagesMulticast uint64
	BytesMulticast uint64
}

// counters is the shared-memory layout of Stats, updated by the helper.
type counters struct {
	clients, connected, authFailures, badRequests, requests   atomic.Uint64
	pagesSent, pagesEmpty, bytesSent, writeFaults, pagesSaved atomic.Uint64
	pagesMulticast, bytesMulticast                            atomic.Uint64
}

func (c *counters) stats() Stats {
	return Stats{
		Clients: c.clients.Load(), Connected: c.connected.Load(), AuthFailures: c.authFailures.Load(),
		BadRequests: c.badRequests.Load(), Requests: c.requests.Load(), PagesSent: c.pagesSent.Load(),
		PagesEmpty: c.pagesEmpty.Load(), BytesSent: c.bytesSent.Load(), WriteFaults: c.writeFaults.Load(),
		PagesSaved: c.pagesSaved.Load(), PagesMulticast: c.pagesMulticast.Load(), BytesMulticast: c.bytesMulticast.Load(),
	}
}

// Server is a memory server: a helper process that holds at most one
// frozen image at a time. Create it when the VM starts, so that Freeze, in
// the fork's pause, need not start a process.
type Server struct {
	proc *helper.Proc
	c    *helper.Counters[counters] // shared with the helper

	mu    sync.Mutex    // serialises requests to the helper, guards image
	image *Image        // the frozen image, if any
	acks  chan ack      // the helper's answers, in request order
	dead  chan struct{} // closed when the control socket ends
	err   error         // why; set before dead is closed
}

// Control messages to the helper.
type (
	request struct {
		Op        string // "config", "arm", "seal", "serve", "multicast", "thaw"
		Handshake time.Duration
		Write     time.Duration
		PID       int
		Regions   []pages.Region // where the parent's RAM is (arm), and its populated pages
		Key       wire.Key
		Iface     string // multicast: the address to send from
		Group     string // multicast: the group, IP:port
	}
	ack struct {
		Err string
	}
)

// New starts a memory server's helper process.
func New(cfg Config) (*Server, error) {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 15 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	c, f, err := helper.NewCounters[counters]()
	if err != nil {
		return nil, fmt.Errorf("start memory server: %w", err)
	}
	proc, err := helper.Spawn(cfg.HelperPath, "server", f)
	f.Close()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("start memory server: %w", err)
	}
	s := &Server{proc: proc, c: c, acks: make(chan ack), dead: make(chan struct{})}
	go s.read()
	if err := s.call(request{Op: "config", Handshake: cfg.HandshakeTimeout, Write: cfg.WriteTimeout}); err != nil {
		s.Close()
		return nil, fmt.Errorf("start memory server: %w", err)
	}
	return s, nil
}

func (s *Server) read() {
	for {
		var a ack
		if _, err := s.proc.Ctl.Recv(&a); err != nil {
			s.err = fmt.Errorf("memory server helper gone: %w", err)
			close(s.dead)
			return
		}
		s.acks <- a
	}
}

// call sends one request (with fds) and waits for its answer. s.mu is held.
func (s *Server) call(q request, fds ...int) error {
	if err := s.proc.Ctl.Send(q, fds...); err != nil {
		return fmt.Errorf("%s: %w", q.Op, err)
	}
	select {
	case a := <-s.acks:
		if a.Err != "" {
			return fmt.Errorf("%s: %s", q.Op, a.Err)
		}
		return nil
	case <-s.dead:
		return fmt.Errorf("%s: %w", q.Op, s.err)
	}
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	var st Stats
	s.c.Read(func(c *counters) { st = c.stats() })
	return st
}

// PID is the helper's process ID.
func (s *Server) PID() int { return s.proc.PID() }

// Done is closed when the helper has gone (after Close, or if it died).
// The parent is unaffected; its children lose their server.
func (s *Server) Done() <-chan struct{} { return s.dead }

// Err says why the helper went; valid once Done is closed.
func (s *Server) Err() error {
	select {
	case <-s.dead:
		return s.err
	default:
		return nil
	}
}

// Image is a frozen image of guest RAM, served until Close.
type Image struct {
	s       *Server
	regions []uint64 // page counts
}

// Arm prepares to freeze regions, while the parent runs: it registers
// them with a userfaultfd in write-protect mode and write-protects every
// page present (page-table work that grows with the memory populated).
// Until Seal, a write to a protected page only records the page as written
// and lifts its protection. Seal, in the parent's pause, then has only the
// pages written (or populated) since to protect, so the pause does not
// grow with RAM.
//
// Guest RAM must not already be registered with a userfaultfd (a child that
// is still filling its RAM through memtap cannot fork yet).
func (s *Server) Arm(regions []Region) (*Image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.image != nil {
		return nil, errors.New("arm: an image is already frozen; close it first")
	}
	if err := pages.CheckCount(len(regions)); err != nil {
		return nil, fmt.Errorf("arm: %w", err)
	}
	q := request{Op: "arm", PID: os.Getpid()}
	im := &Image{s: s}
	for i, r := range regions {
		reg, err := pages.Check(r.Host)
		if err == nil {
			reg.Runs, err = populated(r, reg.Pages)
		}
		if err != nil {
			return nil, fmt.Errorf("arm: region %d: %w", i, err)
		}
		reg.Frozen = r.Frozen
		q.Regions = append(q.Regions, reg)
		im.regions = append(im.regions, reg.Pages)
	}
	u, err := uffd.New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("arm: %w", err)
	}
	// This process keeps no reference once the helper has it: if the
	// helper dies, the kernel drops every protection and wakes every
	// blocked writer, instead of leaving the parent hung.
	defer u.Close()
	if _, err := u.API(uffd.FeatureWP); err != nil {
		return nil, fmt.Errorf("arm: %w", err)
	}
	for i, r := range q.Regions {
		if r.Frozen {
			continue
		}
		ioctls, err := u.Register(uintptr(r.Base), uintptr(r.Pages*uffd.PageSize), uffd.ModeWP)
		if err != nil {
			return nil, fmt.Errorf("arm: region %d: %w", i, err)
		}
		if ioctls&uffd.IoctlWriteProtect == 0 {
			return nil, fmt.Errorf("arm: region %d: kernel cannot write-protect it", i)
		}
	}
	for i, r := range q.Regions {
		if r.Frozen {
			continue
		}
		if err := u.WriteProtect(uintptr(r.Base), uintptr(r.Pages*uffd.PageSize), true, false); err != nil {
			return nil, fmt.Errorf("arm: region %d: %w", i, err)
		}
	}
	if err := s.call(q, u.Fd()); err != nil {
		// The helper closed its copy (or died): with ours closed too,
		// the protection is gone.
		return nil, fmt.Errorf("arm: %w", err)
	}
	s.image = im
	return im, nil
}

// Seal fixes the image as regions are now. Call it with the parent's vCPUs
// paused; they may resume as soon as it returns. Its cost is protecting
// again what was written or populated since Arm, and a round trip to the
// helper. A region without Populated is looked up with mincore(2).
func (im *Image) Seal(regions []Region) error {
	s := im.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.image != im {
		return errors.New("seal: image closed")
	}
	if len(regions) != len(im.regions) {
		return fmt.Errorf("seal: %d regions, the image has %d", len(regions), len(im.regions))
	}
	q := request{Op: "seal"}
	for i, r := range regions {
		runs, err := populated(r, im.regions[i])
		if err != nil {
			return fmt.Errorf("seal: region %d: %w", i, err)
		}
		q.Regions = append(q.Regions, pages.Region{Pages: im.regions[i], Runs: runs})
	}
	if err := s.call(q); err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	return nil
}

// Freeze freezes regions as they are now: Arm and Seal at once, all in
// the pause.
func (s *Server) Freeze(regions []Region) (*Image, error) {
	im, err := s.Arm(regions)
	if err != nil {
		return nil, err
	}
	if err := im.Seal(regions); err != nil {
		im.Close()
		return nil, err
	}
	return im, nil
}

// Serve hands l to the helper, which accepts clients on it and serves them
// the image, authenticating them with key, until the image is closed. It
// returns once the helper has taken l; l is closed here either way (a Unix
// socket's file stays: the helper still listens on it). l must be a
// *net.TCPListener or a *net.UnixListener. Serve may be called for several
// listeners.
func (im *Image) Serve(l net.Listener, key wire.Key) error {
	defer l.Close()
	fl, ok := l.(interface{ File() (*os.File, error) })
	if !ok {
		return fmt.Errorf("serve: listener %T has no descriptor", l)
	}
	if ul, ok := l.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	f, err := fl.File()
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer f.Close()
	im.s.mu.Lock()
	defer im.s.mu.Unlock()
	if im.s.image != im {
		return errors.New("serve: image closed")
	}
	if err := im.s.call(request{Op: "serve", Key: key}, int(f.Fd())); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// Multicast makes the image's clients on other hosts (those that connect
// over TCP) a multicast family: the data pages they ask for go to group
// (NewGroup), sent from iface, and every one of them installs what it
// lacks (mcdist). Call it before Serve.
func (im *Image) Multicast(iface net.IP, group *net.UDPAddr, key wire.Key) error {
	im.s.mu.Lock()
	defer im.s.mu.Unlock()
	if im.s.image != im {
		return errors.New("multicast: image closed")
	}
	if err := im.s.call(request{Op: "multicast", Key: key, Iface: iface.String(), Group: group.String()}); err != nil {
		return fmt.Errorf("multicast: %w", err)
	}
	return nil
}

// Regions returns the image's region sizes in pages.
func (im *Image) Regions() []uint64 { return im.regions }

// Close stops serving the image: listeners and clients are closed, the
// parent's RAM is unprotected and unregistered, the saved pages freed.
func (im *Image) Close() error {
	s := im.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.image != im {
		return nil
	}
	s.image = nil
	if err := s.call(request{Op: "thaw"}); err != nil {
		return fmt.Errorf("close image: %w", err)
	}
	return nil
}

// Close ends the helper (and with it any image: the kernel drops the
// protections when the helper's userfaultfd closes).
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.image = nil
	err := s.proc.Stop(5 * time.Second)
	s.c.Close() // after the helper's exit: its last figures stay readable
	if err != nil {
		return fmt.Errorf("close memory server: %w", err)
	}
	return nil
}

// populated returns the runs of r's populated pages, of n: r.Populated's,
// or with none the pages resident in r.Host.
func populated(r Region, n uint64) ([]pages.Run, error) {
	if r.Populated != nil {
		return pages.RunsOf(r.Populated, n)
	}
	if uint64(len(r.Host)) != n*uffd.PageSize {
		return nil, fmt.Errorf("%d bytes for %d pages", len(r.Host), n)
	}
	return pages.Resident(r.Host)
}
