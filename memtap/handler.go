package memtap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/sfvmm/sfvmm/memtap/internal/helper"
	"github.com/sfvmm/sfvmm/memtap/internal/pages"
	"github.com/sfvmm/sfvmm/memtap/internal/tlslink"
	"github.com/sfvmm/sfvmm/memtap/uffd"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"golang.org/x/sys/unix"
)

// This file is the helper process's side: the fault loop. It runs in one
// goroutine, so its state needs no locks; it never maps the VMM's RAM.

// runHelper is the client helper's body: set up, connect, serve faults
// until the VMM closes the control socket or the server fails.
func runHelper() error {
	ctl, fds, err := helper.Attach(2)
	if err != nil {
		return err
	}
	c, err := helper.MapCounters[counters](fds[0])
	unix.Close(fds[0])
	if err != nil {
		return err
	}
	u := uffd.FromFd(fds[1])
	if err := unix.SetNonblock(u.Fd(), true); err != nil {
		return fmt.Errorf("userfaultfd: %w", err)
	}
	var cfg helperConfig
	pfds, err := ctl.Recv(&cfg)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	h, err := newHandler(cfg, pfds, u, c)
	if err == nil {
		err = h.connect()
	}
	if err != nil {
		return ctl.Send(note{Fatal: err.Error()})
	}
	if err := ctl.Send(note{Ready: true}); err != nil {
		return err
	}

	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return err
	}
	acked := make(chan struct{}, 1)
	go func() {
		for {
			var a ackMsg
			if _, err := ctl.Recv(&a); err != nil {
				unix.Write(p[1], []byte{0}) // the VMM closed us, or died
				return
			}
			acked <- struct{}{}
		}
	}()
	done := make(chan error, 2)
	go func() { done <- h.loop(p[0]) }()
	if h.mem >= 0 {
		go h.watchDirect(done)
	}
	if err = <-done; err == nil {
		return nil
	}
	if ctl.Send(note{Fatal: err.Error()}) == nil {
		select {
		case <-acked:
		case <-time.After(cfg.Kill):
			// The VMM cannot take the error: likely every one of its Ps
			// is held by a thread blocked on guest RAM. End it, so that
			// the child never hangs.
			fmt.Fprintf(os.Stderr, "memtap: %v; the VMM did not take the error within %v: killing it\n", err, cfg.Kill)
			unix.Kill(cfg.VMM, unix.SIGKILL)
		}
	}
	// Keep the userfaultfd until the VMM is done: it fences or exits.
	pfd := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(pfd, -1); !errors.Is(err, unix.EINTR) {
			return nil
		}
	}
}

// Page states.
const (
	missing   = 0
	requested = 1 // asked of the server; the answer will fill it
	present   = 2
)

type hregion struct {
	base  uintptr // in the VMM
	pbase uintptr // in the parent, for direct reads
	pages uint64
	pop   *pages.Bitmap
	state []uint8

	exact  bool   // Exact: no window ahead
	window int    // current fetch window, pages
	next   uint64 // first page after the last window asked for: a fault there is sequential
	ahead  uint64 // first page of the read-ahead window, if any
}

type inflight struct {
	q    wire.Request
	sent time.Time
}

// lookahead is how far a read may go past the start of a response whose
// size is not known yet: a single-page reply, whole.
const lookahead = wire.ResponseSize + wire.MaxBatch + uffd.PageSize

// rbSize holds the largest response plus a lookahead's worth of the next.
const rbSize = wire.ResponseSize + wire.MaxBatch + wire.MaxBatch*uffd.PageSize + lookahead

type handler struct {
	cfg     helperConfig
	u       *uffd.FD
	c       *counters
	regions []hregion
	addr    string // for messages

	// The parent's /proc/PID/mem and pagemap, for direct reads
	// (ParentMemory), or -1; db and pm hold one read of each, kind
	// what each page read is.
	mem, pagemap int
	db, pm, kind []byte
	// readingSince is when the direct read in progress began (Unix
	// nanoseconds), or 0, and tid the thread that reads: watchDirect's
	// view of the handler.
	readingSince atomic.Int64
	tid          atomic.Int32

	mc    *group        // the family's multicast group, if the server has one
	act   []byte        // what complete does with each page of a reply
	sock  int           // the server connection, non-blocking
	tls   *tlslink.Conn // over sock, to a server on another host; nil: sock is plain
	out   []byte        // requests not yet written
	queue []inflight    // requests in order; the server answers in order
	tag   uint32
	// heard is when the server last sent anything (a reply or a
	// keep-alive). answered is the count of requests its last keep-alive
	// said it had answered, and stuck how many keep-alives in a row have
	// said the same while requests waited.
	heard    time.Time
	answered uint64
	stuck    int
	// proc is the server's process, if it is on this host, and starved
	// whether the silence going on has been counted as its starving.
	proc    *serverProc
	starved bool

	// waiting holds, for pages asked of the server, the times faults on
	// them were read (key region<<40 | page).
	waiting map[uint64][]time.Time

	// The receive buffer: rb[rp:rh] holds bytes read and not yet parsed.
	// Responses are parsed in place and their data pages installed from
	// it, so that a single-page reply costs one read(2). A read never
	// goes more than lookahead bytes past the start of a response whose
	// size is unknown, nor past the end of one whose size is known, so
	// what is left after a response is short and cheap to move down.
	rb     []byte
	rp, rh int
	resp   *wire.Response // the response being parsed, once its header is in
	total  int            // its size, once its flags are in; else 0
}

func newHandler(cfg helperConfig, parentFds []int, u *uffd.FD, c *counters) (*handler, error) {
	h := &handler{cfg: cfg, u: u, c: c, addr: cfg.Network + ":" + cfg.Address, waiting: make(map[uint64][]time.Time), mem: -1, pagemap: -1,
		act: make([]byte, wire.MaxBatch)}
	switch {
	case cfg.Direct && len(parentFds) == 2 && len(cfg.ParentBases) == len(cfg.Regions):
		h.mem, h.pagemap = parentFds[0], parentFds[1]
		h.db = make([]byte, wire.MaxBatch*uffd.PageSize)
		h.pm = make([]byte, wire.MaxBatch*8)
		h.kind = make([]byte, wire.MaxBatch)
	case cfg.Direct || len(parentFds) > 0:
		for _, fd := range parentFds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("parent memory: %d descriptors and %d bases for %d regions", len(parentFds), len(cfg.ParentBases), len(cfg.Regions))
	}
	for i, r := range cfg.Regions {
		pop, err := pages.NewBitmap(r.Pages, r.Runs)
		if err != nil {
			return nil, fmt.Errorf("region %d: %w", i, err)
		}
		h.regions = append(h.regions, hregion{
			base: uintptr(r.Base), pages: r.Pages, pop: pop, state: make([]uint8, r.Pages),
			window: cfg.Window, next: ^uint64(0), ahead: ^uint64(0), exact: r.Exact,
		})
		if r.Exact {
			h.regions[i].window = 1
		}
		if h.mem >= 0 {
			h.regions[i].pbase = uintptr(cfg.ParentBases[i])
		}
	}
	rb, err := unix.Mmap(-1, 0, rbSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("receive buffer: %w", err)
	}
	h.rb = rb
	return h, nil
}

// connect dials the server, runs the handshake and keeps the raw socket.
func (h *handler) connect() error {
	bound := h.silence()
	d := net.Dialer{Timeout: bound}
	conn, err := d.Dial(h.cfg.Network, h.cfg.Address)
	if err != nil {
		return fmt.Errorf("connect to memory server: %w", err)
	}
	// A server on another host is reached over TLS keyed by the family
	// key; one on this host's Unix socket needs none. TLS runs on
	// memtap's own descriptor from the start, so that its record layer
	// later runs on the thread that serves faults.
	secure := h.cfg.Network == "tcp"
	var link net.Conn = conn
	if secure {
		cfg, err := tlslink.Config(h.cfg.Key, false)
		if err == nil {
			h.sock, err = dupSocket(conn)
		}
		conn.Close()
		if err != nil {
			return fmt.Errorf("memory server %s: %w", h.addr, err)
		}
		h.tls = tlslink.Client(h.sock, conn.LocalAddr(), conn.RemoteAddr(), cfg)
		link = h.tls
	}
	ok := false
	defer func() {
		if !ok && secure {
			unix.Close(h.sock)
		}
		if !secure {
			conn.Close() // the poll loop has its own descriptor
		}
	}()
	// The handshake's reads end at the deadline. A server on this host
	// that is starved rather than stopped is waited for, as in silent.
	link.SetDeadline(time.Now().Add(bound))
	failed := func(err error) error { return fmt.Errorf("memory server %s: handshake: %w", h.addr, err) }
	if !secure {
		if h.proc = peerProc(conn); h.proc != nil {
			why := h.watchHandshake(link, bound)
			defer why()
			failed = func(err error) error {
				w := why()
				if w == "" && errors.Is(err, os.ErrDeadlineExceeded) {
					w = fmt.Sprintf("; %v ran throughout", h.proc)
				}
				return fmt.Errorf("memory server %s: handshake: %w%s", h.addr, err, w)
			}
		}
	}
	hello, err := wire.ReadHello(link)
	if err != nil {
		return failed(err)
	}
	h.c.bytes.Add(uint64(len(hello.Encode())))
	if len(hello.Regions) != len(h.regions) {
		return fmt.Errorf("memory server %s: image has %d regions, guest RAM %d", h.addr, len(hello.Regions), len(h.regions))
	}
	for i, n := range hello.Regions {
		if n != h.regions[i].pages {
			return fmt.Errorf("memory server %s: image region %d has %d pages, guest RAM %d", h.addr, i, n, h.regions[i].pages)
		}
	}
	nonce, err := wire.NewNonce()
	if err != nil {
		return err
	}
	if _, err := link.Write(wire.Auth{Nonce: nonce, MAC: wire.ClientMAC(h.cfg.Key, hello.Nonce, nonce)}.Encode()); err != nil {
		return failed(err)
	}
	b := make([]byte, wire.WelcomeSize)
	if _, err := io.ReadFull(link, b); err != nil {
		return failed(err)
	}
	h.c.bytes.Add(wire.WelcomeSize)
	w, err := wire.DecodeWelcome(b)
	switch {
	case err != nil:
		return failed(err)
	case w.Status == wire.WelcomeRefused:
		return fmt.Errorf("memory server %s refused the key", h.addr)
	case w.MAC != wire.ServerMAC(h.cfg.Key, hello.Nonce, nonce):
		return fmt.Errorf("memory server %s does not hold the family key", h.addr)
	case w.Port != 0:
		if err := h.joinGroup(w, link.LocalAddr()); err != nil {
			return err
		}
	}
	if !secure {
		if h.sock, err = dupSocket(conn); err != nil {
			return fmt.Errorf("memory server %s: %w", h.addr, err)
		}
	}
	link.SetDeadline(time.Time{})
	unix.SetsockoptInt(h.sock, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	if secure {
		err = h.tls.SetNonblock()
	} else {
		err = unix.SetNonblock(h.sock, true)
	}
	ok = err == nil
	return err
}

// watchHandshake lets the handshake on link, to the server process
// h.proc, wait for as long as that process runs or waits for a CPU, up to
// Config.StuckAfter, and ends it once the process has done neither for
// bound. The function it returns stops the watch and says, for an error,
// why it ended the handshake ("" if it did not).
func (h *handler) watchHandshake(link net.Conn, bound time.Duration) func() string {
	start := time.Now()
	link.SetDeadline(start.Add(max(h.cfg.StuckAfter, bound)))
	h.proc.watch(start)
	stop, done := make(chan struct{}), make(chan string, 1)
	go func() {
		t := time.NewTicker(bound / 2)
		defer t.Stop()
		for {
			select {
			case <-stop:
				done <- ""
				return
			case now := <-t.C:
				if now.Sub(start) >= bound && !h.proc.running(now, bound/2) {
					link.SetDeadline(now) // wakes the read under way
					<-stop
					done <- fmt.Sprintf("; %v", h.proc)
					return
				}
			}
		}
	}()
	var why *string
	return func() string {
		if why == nil {
			close(stop)
			w := <-done
			why = &w
		}
		return *why
	}
}

// dupSocket returns a blocking duplicate of c's descriptor.
func dupSocket(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, errors.New("connection has no descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if cerr := rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
		return -1, cerr
	}
	if err != nil {
		return -1, err
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// loop serves faults until stop becomes readable (nil) or the server fails
// (the error).
func (h *handler) loop(stop int) error {
	// One thread does the direct reads, so that watchDirect can see it.
	runtime.LockOSThread()
	h.tid.Store(int32(unix.Gettid()))
	pfd := []unix.PollFd{
		{Fd: int32(h.u.Fd()), Events: unix.POLLIN},
		{Fd: int32(h.sock), Events: unix.POLLIN},
		{Fd: int32(stop), Events: unix.POLLIN},
	}
	if h.mc != nil {
		pfd = append(pfd, unix.PollFd{Fd: int32(h.mc.fd), Events: unix.POLLIN})
	}
	msgs := make([]uffd.Msg, 64)
	h.heard = time.Now()
	for {
		timeout, asked := -1, time.Duration(0)
		if len(h.queue) > 0 {
			if err := h.silent(); err != nil {
				return err
			}
			asked = h.cfg.Timeout / 10
			timeout = int(asked/time.Millisecond) + 1
		}
		if due := h.groupDue(); !due.IsZero() {
			ms := max(int(time.Until(due)/time.Millisecond)+1, 0)
			if timeout < 0 || ms < timeout {
				timeout = ms
			}
		}
		pfd[1].Events = unix.POLLIN
		if len(h.out) > 0 || h.tls != nil && h.tls.Pending() {
			pfd[1].Events |= unix.POLLOUT
		}
		start := time.Now()
		_, err := unix.Poll(pfd, timeout)
		if timeout >= 0 && stoodStill(start, asked, time.Now()) {
			// This process did not run for a while, and neither,
			// as far as anyone can tell, did the server (a whole
			// machine that stood still): its silence starts over.
			h.heard, h.starved = time.Now(), false
		}
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("poll: %w", err)
		}
		if pfd[2].Revents != 0 {
			return nil
		}
		// The group before the stream: a reply that says a page went
		// there finds it installed.
		if h.mc != nil {
			if pfd[3].Revents != 0 && !h.mc.left {
				if err := h.datagrams(); err != nil {
					return err
				}
			}
			h.groupWork(time.Now())
			if h.mc.left {
				pfd[3].Fd = -1 // poll skips it
			}
		}
		if pfd[1].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0 {
			if err := h.receive(); err != nil {
				return err
			}
		}
		if pfd[1].Revents&unix.POLLOUT != 0 {
			if err := h.flush(); err != nil {
				return err
			}
		}
		if pfd[0].Revents&unix.POLLIN != 0 {
			for {
				n, err := h.u.Read(msgs)
				if errors.Is(err, unix.EAGAIN) {
					break
				}
				if err != nil {
					return fmt.Errorf("read userfaultfd: %w", err)
				}
				now := time.Now()
				for _, m := range msgs[:n] {
					if m.Event != uffd.EventPagefault {
						continue
					}
					if err := h.fault(uintptr(m.Address)&^(uffd.PageSize-1), now); err != nil {
						return err
					}
				}
				if err := h.flush(); err != nil {
					return err
				}
			}
		}
	}
}

// silent fails the connection when requests wait and nothing, not even a
// keep-alive, has come from the server for Config.Timeout: it is gone,
// stopped or cut off. A server that is merely slow (many clients) still
// sends keep-alives and is waited for; so is one on this host that is
// starved of CPU and cannot send them, as long as its process runs or
// waits to (serverProc), up to Config.StuckAfter. Bytes already in the
// socket are read first, so that time in which this process itself did not
// run is not held against the server.
func (h *handler) silent() error {
	bound := h.silence()
	quiet := time.Since(h.heard)
	if h.proc != nil && quiet > bound/2 && h.proc.at.Before(h.heard) {
		h.proc.watch(time.Now())
	}
	if quiet <= bound {
		return nil
	}
	if err := h.receive(); err != nil {
		return err
	}
	if time.Since(h.heard) <= bound {
		return nil
	}
	if h.proc != nil {
		switch {
		case time.Since(h.heard) >= h.cfg.StuckAfter:
			return fmt.Errorf("memory server %s: no answer in %v, while its process ran", h.addr, h.cfg.StuckAfter)
		case h.proc.running(time.Now(), bound/2):
			if h.proc.seen && !h.starved {
				h.starved = true
				h.c.starved.Add(1)
			}
			return nil
		}
		return fmt.Errorf("memory server %s: no answer in %v (nor any keep-alive); %v", h.addr, bound, h.proc)
	}
	return fmt.Errorf("memory server %s: no answer in %v (nor any keep-alive)%s", h.addr, bound, h.tcpState())
}

// silence is how long the server may be silent: Config.Timeout, or three
// times that between hosts. There a silence lasts as long as TCP's
// retransmission backoff when the link loses packets, and the server's
// keep-alives queue behind the segment that was lost: with 10% loss
// (TestMulticastLoss) about one run in ten had a handshake, and later a
// reply stream, silent for more than 5 s. Three times covers two more
// doublings of the backoff.
func (h *handler) silence() time.Duration { return silence(h.cfg.Network, h.cfg.Timeout) }

func silence(network string, timeout time.Duration) time.Duration {
	if network == "tcp" {
		return 3 * timeout
	}
	return timeout
}

// connectBound is the longest connect takes: a dial and a handshake, each
// bounded by the silence, except a handshake with a server on this host
// that runs, which may take StuckAfter (watchHandshake).
func connectBound(network string, timeout, stuck time.Duration) time.Duration {
	if network == "unix" {
		return silence(network, timeout) + max(stuck, timeout)
	}
	return 2 * silence(network, timeout)
}

// tcpState describes the server connection as TCP sees it, for an error
// that says why nothing came: whether data was lost on the way and is
// being sent again, or nothing arrives at all.
func (h *handler) tcpState() string {
	if h.cfg.Network != "tcp" {
		return ""
	}
	ti, err := unix.GetsockoptTCPInfo(h.sock, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("; TCP: last data received %v ago, %d segments out of order; ours: %d unacknowledged, retransmission timeout %v, backed off %d times",
		time.Duration(ti.Last_data_recv)*time.Millisecond, ti.Rcv_ooopack, ti.Unacked, time.Duration(ti.Rto)*time.Microsecond, ti.Backoff)
}

// stoodStill reports whether a wait of asked that began at start and
// ended at now ended later than asked by more than asked again: time in
// which this process did not run.
func stoodStill(start time.Time, asked time.Duration, now time.Time) bool {
	return now.Sub(start) > 2*asked
}

// alive takes a keep-alive saying the server has answered answered
// requests. A server that keeps saying so while requests wait, for
// Config.StuckAfter, is alive but stuck, and fails the connection.
func (h *handler) alive(answered uint64) error {
	if len(h.queue) == 0 || answered != h.answered {
		h.stuck = 0
	} else {
		h.stuck++
	}
	h.answered = answered
	if time.Duration(h.stuck)*wire.AliveInterval >= h.cfg.StuckAfter {
		return fmt.Errorf("memory server %s is alive but has answered nothing in %v", h.addr, h.cfg.StuckAfter)
	}
	return nil
}

func (h *handler) served(since time.Time) {
	h.c.hist[bucket(time.Since(since))].Add(1)
}

// fault handles a fault on the page at a, read at now.
func (h *handler) fault(a uintptr, now time.Time) error {
	ri, p, ok := pages.Locate(h.cfg.Regions, uint64(a))
	if !ok {
		return fmt.Errorf("fault at %#x outside guest RAM", a)
	}
	h.c.faults.Add(1)
	r := &h.regions[ri]
	switch r.state[p] {
	case present:
		// Filled while the fault was queued; the filling woke it, or
		// this does.
		h.served(now)
		if err := h.u.Wake(a, uffd.PageSize); err != nil {
			return err
		}
	case requested:
		key := uint64(ri)<<40 | p
		h.waiting[key] = append(h.waiting[key], now)
		// A fault in the read-ahead: the reader caught up; stay ahead.
		if p >= r.ahead && p < r.next && r.window > 1 {
			return h.readAhead(ri, p)
		}
	case missing:
		if !r.pop.Get(p) {
			// Never populated: zero, with the rest of its run.
			end := p + 1
			for end < r.pages && end-p < wire.MaxBatch && !r.pop.Get(end) && r.state[end] == missing {
				end++
			}
			for q := p; q < end; q++ {
				r.state[q] = present
			}
			// Counters first: the install wakes the faulting thread,
			// which may read them at once.
			h.c.zeroFilled.Add(end - p)
			h.served(now)
			_, _, err := h.u.ZeroPage(a, uintptr(end-p)*uffd.PageSize, 0)
			return err
		}
		seq := p == r.next
		switch {
		case r.exact:
		case seq:
			r.window = min(2*r.window, h.cfg.Max)
		default:
			r.window = h.cfg.Window
		}
		// Waiting first: a direct read fills the page before fetch
		// returns.
		key := uint64(ri)<<40 | p
		h.waiting[key] = append(h.waiting[key], now)
		end, err := h.fetch(ri, p, r.window)
		if err != nil {
			return err
		}
		r.ahead, r.next = ^uint64(0), end
		if seq && r.window > 1 {
			r.ahead = end
			return h.readAhead(ri, p)
		}
	}
	return nil
}

// aheadWindows is how many windows a sequential reader is kept ahead of:
// more than one, so that the server sends the next while memtap installs
// the last.
const aheadWindows = 2

// readAhead asks for windows after r.next until aheadWindows of them lie
// ahead of page p, the reader's position.
func (h *handler) readAhead(ri int, p uint64) error {
	r := &h.regions[ri]
	for r.next < r.pages && r.next-p < uint64(aheadWindows*r.window) {
		end, err := h.fetch(ri, r.next, r.window)
		if err != nil {
			return err
		}
		if end == r.next {
			return nil // the next page is there already
		}
		r.next = end
	}
	return nil
}

// fetch gets up to w missing pages from p on (stopping at the first page
// that is not missing, and then taking missing pages below p to make up
// the window), straight from the parent's memory where it can and
// otherwise from the server, and returns the page after the last one.
// Direct reads also stop at pages the parent never populated: reading
// them would make the parent map them, and they are zero-filled anyway.
func (h *handler) fetch(ri int, p uint64, w int) (uint64, error) {
	r := &h.regions[ri]
	wanted := func(q uint64) bool { return r.state[q] == missing && (h.mem < 0 || r.pop.Get(q)) }
	end := p
	for end < r.pages && end-p < uint64(w) && wanted(end) {
		r.state[end] = requested
		end++
	}
	if end == p {
		return p, nil
	}
	// Short of a window forward (the pages above are there already, as
	// in a descending scan): fill it with the missing pages below.
	first := p
	for first > 0 && end-first < uint64(w) && wanted(first-1) {
		first--
		r.state[first] = requested
	}
	if h.mem >= 0 {
		return end, h.readDirect(ri, first, end)
	}
	h.request(ri, first, end)
	return end, nil
}

// request asks the server for pages [first, end) of region ri.
func (h *handler) request(ri int, first, end uint64) { h.requestFlags(ri, first, end, h.firstAsk()) }

// requestFlags asks for pages [first, end) of region ri with flags.
func (h *handler) requestFlags(ri int, first, end uint64, flags uint32) {
	h.tag++
	q := wire.Request{Region: uint32(ri), First: first, Count: uint32(end - first), Tag: h.tag, Flags: flags}
	h.out = q.Append(h.out)
	h.queue = append(h.queue, inflight{q: q, sent: time.Now()})
	h.c.requests.Add(1)
}

// PM_UFFD_WP, pagemap's bit for a page that userfaultfd write-protects.
const pagemapUffdWP = 1 << 57

// Page kinds in a direct read.
const (
	directData  = iota // as at the fork: install the data read
	directZero         // as at the fork, and all zero
	directStale        // written since, or unprotected: ask the server
)

// readDirect reads pages [first, end) of region ri from the parent's
// memory, then their pagemap entries, and installs the pages that were
// still write-protected after they were read (see ParentMemory). The
// rest are asked of the server. A read that fails (the parent is gone)
// leaves the pages to the server too.
func (h *handler) readDirect(ri int, first, end uint64) error {
	r := &h.regions[ri]
	n := int(end - first)
	data, pm := h.db[:n*uffd.PageSize], h.pm[:n*8]
	addr := r.pbase + uintptr(first)*uffd.PageSize
	h.readingSince.Store(time.Now().UnixNano())
	got := preadFull(h.mem, data, int64(addr)) / uffd.PageSize
	if got > 0 && preadFull(h.pagemap, pm[:got*8], int64(addr/uffd.PageSize*8)) < got*8 {
		got = 0
	}
	h.readingSince.Store(0)
	kind := h.kind[:n]
	var direct, zero, prefetched uint64
	for i := range kind {
		page := data[i*uffd.PageSize : (i+1)*uffd.PageSize]
		switch {
		case i >= got || binary.LittleEndian.Uint64(pm[i*8:])&pagemapUffdWP == 0:
			kind[i] = directStale
			continue
		case pages.Zero(page):
			kind[i] = directZero
			zero++
		default:
			kind[i] = directData
			direct++
		}
		// Counters first, as in complete.
		if h.landed(ri, first+uint64(i), kind[i] == directData) {
			prefetched++
		}
	}
	h.c.fetched.Add(direct)
	h.c.direct.Add(direct)
	h.c.zeroFilled.Add(zero)
	h.c.prefetched.Add(prefetched)
	for i := 0; i < n; {
		j := i + 1
		for j < n && kind[j] == kind[i] {
			j++
		}
		dst := r.base + uintptr(first+uint64(i))*uffd.PageSize
		size := uintptr(j-i) * uffd.PageSize
		var err error
		switch kind[i] {
		case directData:
			_, _, err = h.u.Copy(dst, uintptr(unsafe.Pointer(&data[i*uffd.PageSize])), size, 0)
		case directZero:
			_, _, err = h.u.ZeroPage(dst, size, 0)
		case directStale:
			h.request(ri, first+uint64(i), first+uint64(j))
		}
		if err != nil {
			return fmt.Errorf("install pages: %w", err)
		}
		i = j
	}
	return nil
}

// watchDirect fails the child when a direct read of the parent's memory
// has been blocked in the kernel for Config.Timeout. The read takes the
// parent's mm lock, which a parent thread blocked on a stopped (not dead)
// memory server can hold up for as long as the server stays stopped, and
// it cannot be interrupted: the error ends the child as a silent server's
// does, and the helper's exit ends the read. Only time in which the
// reading thread is blocked counts: a thread that is runnable, waiting for
// a CPU on a busy host, is making progress.
func (h *handler) watchDirect(done chan<- error) {
	every := h.cfg.Timeout / 10
	t := time.NewTicker(every)
	defer t.Stop()
	var read int64 // the read being watched, by its start time
	var blocked time.Duration
	for range t.C {
		s := h.readingSince.Load()
		if s == 0 || s != read {
			read, blocked = s, 0
			continue
		}
		if !runnable(int(h.tid.Load())) {
			blocked += every
		}
		if blocked >= h.cfg.Timeout {
			done <- fmt.Errorf("a read of the parent's memory has been blocked for %v: is the parent or its memory server stopped?", h.cfg.Timeout)
			return
		}
	}
}

// runnable reports whether thread tid of this process is running or
// waiting for a CPU (state R), rather than blocked.
func runnable(tid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", tid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and
	// may itself hold any byte.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'R'
}

// preadFull reads len(b) bytes at off, or as many as it can, and returns
// how many it read.
func preadFull(fd int, b []byte, off int64) int {
	done := 0
	for done < len(b) {
		n, err := unix.Pread(fd, b[done:], off+int64(done))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n <= 0 {
			break
		}
		done += n
	}
	return done
}

func (h *handler) flush() error {
	for len(h.out) > 0 {
		var n int
		var err error
		if h.tls != nil {
			n, err = h.tls.Write(h.out) // takes all: the rest waits in h.tls
		} else {
			n, err = unix.Write(h.sock, h.out)
		}
		if errors.Is(err, unix.EAGAIN) {
			return nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("memory server %s: send: %w", h.addr, err)
		}
		h.out = h.out[n:]
	}
	h.out = h.out[:0]
	if h.tls != nil {
		if err := h.tls.Flush(); err != nil && !errors.Is(err, unix.EAGAIN) {
			return fmt.Errorf("memory server %s: send: %w", h.addr, err)
		}
	}
	return nil
}

// receive reads what the server has sent and installs every complete
// response.
func (h *handler) receive() error {
	for {
		if err := h.parse(); err != nil {
			return err
		}
		limit := h.rp + lookahead
		if h.total > 0 {
			limit = h.rp + h.total
		}
		if h.rh >= limit {
			continue // parse has what it needs
		}
		var n int
		var err error
		if h.tls != nil {
			n, err = h.tls.Read(h.rb[h.rh:limit])
			if errors.Is(err, io.EOF) {
				n, err = 0, nil
			}
		} else {
			n, err = unix.Read(h.sock, h.rb[h.rh:limit])
		}
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("memory server %s: receive: %w", h.addr, err)
		case n == 0:
			return fmt.Errorf("memory server %s closed the connection", h.addr)
		}
		h.rh += n
		h.c.bytes.Add(uint64(n))
		h.heard, h.starved = time.Now(), false
	}
}

// parse consumes the complete responses in rb[rp:rh].
func (h *handler) parse() error {
	for {
		buf := h.rb[h.rp:h.rh]
		if h.resp == nil {
			if len(buf) < wire.ResponseSize {
				break
			}
			resp, err := wire.DecodeResponse(buf[:wire.ResponseSize])
			if err != nil {
				return fmt.Errorf("memory server %s: %w", h.addr, err)
			}
			if resp.Status == wire.StatusAlive {
				h.rp += wire.ResponseSize
				if err := h.alive(resp.First); err != nil {
					return err
				}
				continue
			}
			if len(h.queue) == 0 {
				return fmt.Errorf("memory server %s: reply to no request", h.addr)
			}
			q := h.queue[0].q
			if resp.Status == wire.StatusBadRequest {
				return fmt.Errorf("memory server %s refused request for region %d pages [%d, +%d)", h.addr, q.Region, q.First, q.Count)
			}
			if resp.Tag != q.Tag || resp.Region != q.Region || resp.First != q.First || resp.Count != q.Count {
				return fmt.Errorf("memory server %s: reply %+v does not match request %+v", h.addr, resp, q)
			}
			h.resp = &resp
		}
		count := int(h.resp.Count)
		if h.total == 0 {
			if len(buf) < wire.ResponseSize+count {
				break
			}
			n, err := wire.DataPages(buf[wire.ResponseSize : wire.ResponseSize+count])
			if err != nil {
				return fmt.Errorf("memory server %s: %w", h.addr, err)
			}
			h.total = wire.ResponseSize + count + n*uffd.PageSize
		}
		if len(buf) < h.total {
			break
		}
		if err := h.complete(buf[wire.ResponseSize:wire.ResponseSize+count], buf[wire.ResponseSize+count:h.total]); err != nil {
			return err
		}
		h.rp += h.total
		h.resp, h.total = nil, 0
	}
	// Move what is left (at most a lookahead) to the front.
	if h.rp > 0 {
		h.rh = copy(h.rb, h.rb[h.rp:h.rh])
		h.rp = 0
	}
	return nil
}

// landed marks page p of region ri present, just before it is installed,
// and serves the faults waiting on it. It reports a data page that no
// fault waited on: a prefetch.
func (h *handler) landed(ri int, p uint64, data bool) bool {
	h.regions[ri].state[p] = present
	if data && h.regions[ri].exact {
		h.c.exact.Add(1)
	}
	key := uint64(ri)<<40 | p
	ts, ok := h.waiting[key]
	if !ok {
		return data
	}
	for _, t := range ts {
		h.served(t)
	}
	delete(h.waiting, key)
	return false
}

// What complete does with a page of a reply.
const (
	actSkip     = iota // nothing: present already, or coming on the group
	actSkipData        // nothing, but its data follows in the reply
	actCopy            // install the data that follows
	actZero            // install a zero page
)

// complete installs the current response's pages, data with UFFDIO_COPY
// and the rest with UFFDIO_ZEROPAGE, a run at a time; each wakes the
// faults waiting in its run. A page that went to the multicast group is
// left to come there, and one that came there already is not installed
// again.
func (h *handler) complete(flags, data []byte) error {
	q := h.queue[0].q
	h.queue = h.queue[1:]
	r := &h.regions[q.Region]
	now := time.Now()
	act := h.act[:len(flags)]
	// Counters first: the installs wake the faulting threads, which may
	// read them at once. Fault latency is measured to the install.
	var fetched, zero, prefetched uint64
	for i, f := range flags {
		p := q.First + uint64(i)
		switch {
		case r.state[p] == present && f == wire.PageData:
			act[i] = actSkipData
		case r.state[p] == present:
			act[i] = actSkip
		case f == wire.PageMulticast:
			act[i] = actSkip
			h.await(int(q.Region), p, now)
		case f == wire.PageData:
			act[i] = actCopy
			fetched++
			if h.landed(int(q.Region), p, true) {
				prefetched++
			}
		default:
			act[i] = actZero
			zero++
			h.landed(int(q.Region), p, false)
		}
	}
	h.c.fetched.Add(fetched)
	h.c.zeroFilled.Add(zero)
	h.c.prefetched.Add(prefetched)
	// Data pages follow in order, so a run of data flags is a contiguous
	// run of data.
	var src uintptr
	if len(data) > 0 {
		src = uintptr(unsafe.Pointer(&data[0]))
	}
	for i := 0; i < len(act); {
		j := i + 1
		for j < len(act) && act[j] == act[i] {
			j++
		}
		dst := r.base + uintptr(q.First+uint64(i))*uffd.PageSize
		n := uintptr(j-i) * uffd.PageSize
		var err error
		switch act[i] {
		case actCopy:
			_, _, err = h.u.Copy(dst, src, n, 0)
			src += n
		case actSkipData:
			src += n
		case actZero:
			_, _, err = h.u.ZeroPage(dst, n, 0)
		}
		if err != nil {
			return fmt.Errorf("install pages: %w", err)
		}
		i = j
	}
	return nil
}
