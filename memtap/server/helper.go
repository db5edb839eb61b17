package server

import (
	"crypto/hmac"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/sfvmm/sfvmm/memtap/internal/helper"
	"github.com/sfvmm/sfvmm/memtap/internal/mcdist"
	"github.com/sfvmm/sfvmm/memtap/internal/pages"
	"github.com/sfvmm/sfvmm/memtap/internal/tlslink"
	"github.com/sfvmm/sfvmm/memtap/uffd"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"golang.org/x/sys/unix"
)

// HelperMain runs the memory server's helper when this process was started
// as one, and never returns then; otherwise it returns at once. memtap.Main
// calls it: a VMM calls memtap.Main, not this.
func HelperMain() { helper.Main("server", runHelper) }

// srv is the helper's state. Only its control loop touches it.
type srv struct {
	ctl              *helper.Conn
	c                *counters
	handshake, write time.Duration
	img              *image
}

func runHelper() error {
	ctl, files, err := helper.Attach(1)
	if err != nil {
		return err
	}
	c, err := helper.MapCounters[counters](files[0])
	unix.Close(files[0])
	if err != nil {
		return err
	}
	s := &srv{ctl: ctl, c: c, handshake: 15 * time.Second, write: 10 * time.Second}
	for {
		var q request
		fds, err := ctl.Recv(&q)
		if err != nil {
			if s.img != nil {
				s.img.close()
			}
			if errors.Is(err, io.EOF) {
				return nil // the VMM closed us
			}
			return err
		}
		var opErr error
		switch q.Op {
		case "config":
			s.handshake, s.write = q.Handshake, q.Write
		case "arm":
			opErr = s.arm(q, fds)
			fds = nil
		case "seal":
			opErr = s.seal(q)
		case "serve":
			opErr = s.serve(q, fds)
			fds = nil
		case "multicast":
			opErr = s.multicast(q)
		case "thaw":
			if s.img != nil {
				s.img.close()
				s.img = nil
			}
		default:
			opErr = fmt.Errorf("unknown request %q", q.Op)
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
		var a ack
		if opErr != nil {
			a.Err = opErr.Error()
		}
		if err := ctl.Send(a); err != nil {
			return err
		}
	}
}

// region is the state of one RAM region of the parent, whose place is
// image.layout's of the same index.
type region struct {
	pop   *pages.Bitmap // populated at the freeze; until Seal, at Arm; guarded by image.mu
	dirty *pages.Bitmap // written while armed, so no longer protected; guarded by image.mu
	// frozen: not write-protected; the region does not change once
	// sealed (server.Region.Frozen).
	frozen bool
}

// image is a frozen image being served.
type image struct {
	s       *srv
	pid     int // the parent, whose memory is read with process_vm_readv
	u       *uffd.FD
	layout  []pages.Region // where each region is in the parent (no runs)
	regions []region
	pages   []uint64 // page counts, for the Hello and request checks

	// mu orders the saving of a page against reading it: the write-protect
	// handler holds it for writing while it copies a page and records the
	// copy; a reader holds it for reading from when it finds a page has no
	// copy until it has read the live page. A page's protection is lifted
	// only after its copy is recorded, so a reader holding mu that finds no
	// copy reads a page that is still protected, hence unchanged.
	mu     sync.RWMutex
	armed  bool              // Arm has run, Seal not yet: writes are recorded, not saved; guarded by mu
	saved  map[uint64][]byte // region<<40 | page → the page before the parent's first write; guarded by mu
	slabs  [][]byte          // mmap'd storage for saved pages; guarded by mu
	free   []byte            // unused tail of the last slab; guarded by mu
	broken atomic.Pointer[error]

	stopR, stopW int // a pipe that wakes the write-protect handler to leave
	wpDone       chan struct{}

	lmu       sync.Mutex // guards listeners, conns, raw, closed
	listeners []net.Listener
	conns     map[net.Conn]struct{} // clients in the handshake
	raw       map[int]struct{}      // descriptors of clients past it
	closed    bool
	// mc multicasts data pages to the TCP clients' group, if set (before
	// any client is served); remote counts the TCP clients past the
	// handshake, who share the group.
	mc      atomic.Pointer[mcast]
	remote  atomic.Int32
	clients sync.WaitGroup // accept loops and client goroutines
}

const slabSize = 2 << 20

func (s *srv) arm(q request, fds []int) error {
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return fmt.Errorf("arm: %d descriptors, want the userfaultfd", len(fds))
	}
	u := uffd.FromFd(fds[0])
	if s.img != nil {
		u.Close()
		return errors.New("arm: an image is already frozen")
	}
	im := &image{s: s, pid: q.PID, u: u, armed: true, saved: make(map[uint64][]byte), conns: make(map[net.Conn]struct{}), raw: make(map[int]struct{}), wpDone: make(chan struct{})}
	for i, r := range q.Regions {
		pop, err := pages.NewBitmap(r.Pages, r.Runs)
		if err != nil {
			u.Close() // releases the protection: the parent is not left hanging
			return fmt.Errorf("arm: region %d: %w", i, err)
		}
		dirty, _ := pages.NewBitmap(r.Pages, nil)
		im.layout = append(im.layout, pages.Region{Base: r.Base, Pages: r.Pages})
		im.regions = append(im.regions, region{pop: pop, dirty: dirty, frozen: r.Frozen})
		im.pages = append(im.pages, r.Pages)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		u.Close()
		return fmt.Errorf("arm: %w", err)
	}
	im.stopR, im.stopW = p[0], p[1]
	if err := unix.SetNonblock(u.Fd(), true); err != nil {
		u.Close()
		return fmt.Errorf("arm: %w", err)
	}
	go im.handleWrites()
	s.img = im
	return nil
}

// seal fixes the armed image at this instant (the parent is paused): the
// populated set becomes q's, and every page written while armed, or
// populated since, is protected again. From here on a write saves the page
// first.
func (s *srv) seal(q request) error {
	im := s.img
	if im == nil {
		return errors.New("seal: no image")
	}
	if len(q.Regions) != len(im.regions) {
		return fmt.Errorf("seal: %d regions, the image has %d", len(q.Regions), len(im.regions))
	}
	pops := make([]*pages.Bitmap, len(q.Regions))
	for i, r := range q.Regions {
		if r.Pages != im.pages[i] {
			return fmt.Errorf("seal: region %d of %d pages, the image's has %d", i, r.Pages, im.pages[i])
		}
		var err error
		if pops[i], err = pages.NewBitmap(r.Pages, r.Runs); err != nil {
			return fmt.Errorf("seal: region %d: %w", i, err)
		}
	}
	im.mu.Lock()
	defer im.mu.Unlock()
	if !im.armed {
		return errors.New("seal: the image is sealed already")
	}
	for i := range im.regions {
		r, base := &im.regions[i], uintptr(im.layout[i].Base)
		if r.frozen {
			r.pop, r.dirty = pops[i], nil
			continue
		}
		var err error
		pages.Runs(r.dirty, pops[i], r.pop, func(start, n uint64) {
			if err == nil {
				err = im.u.WriteProtect(base+uintptr(start)*uffd.PageSize, uintptr(n)*uffd.PageSize, true, false)
			}
		})
		if err != nil {
			return fmt.Errorf("seal: region %d: %w", i, err)
		}
		r.pop, r.dirty = pops[i], nil
	}
	im.armed = false
	return nil
}

// handleWrites is the copy-before-write handler: for each write-protect
// fault of the parent it saves the page, if the image needs it and has no
// copy yet, then lifts the page's protection, which lets the write land.
func (im *image) handleWrites() {
	defer close(im.wpDone)
	msgs := make([]uffd.Msg, 64)
	pfd := []unix.PollFd{{Fd: int32(im.u.Fd()), Events: unix.POLLIN}, {Fd: int32(im.stopR), Events: unix.POLLIN}}
	for {
		n, err := im.u.Read(msgs)
		if errors.Is(err, unix.EAGAIN) {
			if _, err := unix.Poll(pfd, -1); err != nil && !errors.Is(err, unix.EINTR) {
				im.fail(fmt.Errorf("poll userfaultfd: %w", err))
				return
			}
			if pfd[1].Revents != 0 {
				return
			}
			continue
		}
		if err != nil {
			im.fail(fmt.Errorf("read userfaultfd: %w", err))
			return
		}
		for _, m := range msgs[:n] {
			if m.Event != uffd.EventPagefault {
				continue
			}
			im.saveAndRelease(uintptr(m.Address) &^ (uffd.PageSize - 1))
		}
	}
}

func (im *image) saveAndRelease(a uintptr) {
	im.s.c.writeFaults.Add(1)
	ri, p, ok := pages.Locate(im.layout, uint64(a))
	im.mu.Lock()
	if im.armed {
		// Not sealed yet: nothing to keep; Seal protects it again.
		if ok {
			im.regions[ri].dirty.Set(p)
		}
		if err := im.u.WriteProtect(a, uffd.PageSize, false, false); err != nil {
			im.fail(err)
		}
		im.mu.Unlock()
		return
	}
	im.mu.Unlock()
	if ok && im.regions[ri].pop.Get(p) {
		key := uint64(ri)<<40 | p
		im.mu.Lock()
		if _, done := im.saved[key]; !done {
			buf, err := im.alloc()
			if err == nil {
				err = readParent(im.pid, [][]byte{buf}, []uintptr{a})
			}
			if err != nil {
				// The image has lost this page: fail it rather than
				// serve a wrong one. The parent still goes on.
				im.fail(fmt.Errorf("save page %#x: %w", a, err))
			} else {
				im.saved[key] = buf
				im.s.c.pagesSaved.Add(1)
			}
		}
		im.mu.Unlock()
	}
	if err := im.u.WriteProtect(a, uffd.PageSize, false, false); err != nil {
		im.fail(err)
	}
}

func (im *image) fail(err error) {
	im.broken.CompareAndSwap(nil, &err)
	fmt.Fprintf(os.Stderr, "memtap server: image broken: %v\n", err)
}

// alloc returns storage for one saved page. im.mu is held.
func (im *image) alloc() ([]byte, error) {
	if len(im.free) == 0 {
		slab, err := unix.Mmap(-1, 0, slabSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return nil, fmt.Errorf("page store: %w", err)
		}
		im.slabs = append(im.slabs, slab)
		im.free = slab
	}
	p := im.free[:uffd.PageSize:uffd.PageSize]
	im.free = im.free[uffd.PageSize:]
	return p, nil
}

// readParent reads the parent's pages at addrs (page-sized, sorted or not)
// into bufs with one process_vm_readv, merging adjacent ranges.
func readParent(pid int, bufs [][]byte, addrs []uintptr) error {
	var local []unix.Iovec
	var remote []unix.RemoteIovec
	total := 0
	for i, b := range bufs {
		n := len(b)
		total += n
		if k := len(remote) - 1; k >= 0 && remote[k].Base+uintptr(remote[k].Len) == addrs[i] &&
			uintptr(unsafe.Pointer(local[k].Base))+uintptr(local[k].Len) == uintptr(unsafe.Pointer(&b[0])) {
			remote[k].Len += n
			local[k].Len += uint64(n)
			continue
		}
		iov := unix.Iovec{Base: &b[0]}
		iov.SetLen(n)
		local = append(local, iov)
		remote = append(remote, unix.RemoteIovec{Base: addrs[i], Len: n})
	}
	for len(local) > 0 {
		// IOV_MAX is 1024; a batch never comes near it, but be exact.
		k := min(len(local), 1024)
		got, err := unix.ProcessVMReadv(pid, local[:k], remote[:k], 0)
		if err != nil {
			return fmt.Errorf("process_vm_readv: %w", err)
		}
		want := 0
		for _, r := range remote[:k] {
			want += r.Len
		}
		if got != want {
			return fmt.Errorf("process_vm_readv: read %d of %d bytes", got, want)
		}
		local, remote = local[k:], remote[k:]
	}
	return nil
}

// multicast makes the image's TCP clients a multicast family (mcdist),
// sending from the address q.Iface.
func (s *srv) multicast(q request) error {
	im := s.img
	if im == nil {
		return errors.New("multicast: no frozen image")
	}
	if im.mc.Load() != nil {
		return errors.New("multicast: already on")
	}
	group, err := net.ResolveUDPAddr("udp4", q.Group)
	if err != nil {
		return fmt.Errorf("multicast: group %q: %w", q.Group, err)
	}
	m, err := newMcast(net.ParseIP(q.Iface), group, q.Key)
	if err != nil {
		return err
	}
	im.mc.Store(m)
	return nil
}

func (s *srv) serve(q request, fds []int) error {
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return fmt.Errorf("serve: %d descriptors, want the listener", len(fds))
	}
	// A client on this host learns which process serves it from its
	// socket's peer credentials, which the kernel takes from the last
	// listen(2): listening again makes them this process's, not the
	// VMM's that made the socket (memtap's serverProc).
	if d, err := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_DOMAIN); err == nil && d == unix.AF_UNIX {
		if err := unix.Listen(fds[0], unix.SOMAXCONN); err != nil {
			unix.Close(fds[0])
			return fmt.Errorf("serve: listen: %w", err)
		}
	}
	f := os.NewFile(uintptr(fds[0]), "listener")
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	im := s.img
	if im == nil {
		l.Close()
		return errors.New("serve: no frozen image")
	}
	im.lmu.Lock()
	defer im.lmu.Unlock()
	im.listeners = append(im.listeners, l)
	im.clients.Add(1)
	go im.accept(l, q.Key)
	return nil
}

func (im *image) accept(l net.Listener, key wire.Key) {
	defer im.clients.Done()
	// Clones on other hosts connect over TCP, and their pages go over
	// TLS keyed by the family key; local clones' Unix sockets need none.
	var secure *tls.Config
	if _, ok := l.(*net.TCPListener); ok {
		var err error
		if secure, err = tlslink.Config(key, true); err != nil {
			fmt.Fprintf(os.Stderr, "memtap server: %v\n", err)
			return
		}
	}
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed
		}
		im.lmu.Lock()
		if im.closed {
			im.lmu.Unlock()
			c.Close()
			return
		}
		im.conns[c] = struct{}{}
		im.clients.Add(1)
		im.lmu.Unlock()
		go im.client(c, key, secure)
	}
}

// client serves one connection until it ends or misbehaves; secure, if
// set, is its TLS. Nothing it
// does blocks another client: the only shared lock, im.mu, is held for
// memory reads only.
//
// After the handshake it leaves Go's network poller and does blocking
// reads and writes on its own descriptor: a fault's round trip then wakes
// this thread directly, instead of the poller and then this goroutine,
// which costs several microseconds per fault. A thread per client is fine
// for a clone family.
func (im *image) client(c net.Conn, key wire.Key, secure *tls.Config) {
	defer im.clients.Done()
	// TLS runs on this thread's own descriptor from the start, so that
	// its record layer later runs in the blocking reads and writes below.
	var link net.Conn = c
	var tc *tlslink.Conn
	fd, ok := -1, true
	if secure != nil {
		fd, ok = rawFd(c)
		c.Close()
		im.lmu.Lock()
		delete(im.conns, c)
		if ok {
			tc = tlslink.Server(fd, c.LocalAddr(), c.RemoteAddr(), secure)
			link = tc
			im.conns[tc] = struct{}{} // Close wakes its handshake
		}
		im.lmu.Unlock()
		if !ok {
			return
		}
	}
	var mc *mcast
	if secure != nil {
		mc = im.mc.Load() // a family across hosts shares a group
	}
	authed := im.handshake(link, key, mc)
	switch {
	case !authed:
		ok = false
	case secure == nil:
		fd, ok = rawFd(c)
	}
	if secure == nil {
		c.Close()
	}
	im.lmu.Lock()
	delete(im.conns, link)
	if ok && im.closed {
		ok = false
	}
	if ok {
		im.raw[fd] = struct{}{}
	}
	im.lmu.Unlock()
	if !ok {
		if fd >= 0 {
			unix.Close(fd)
		}
		return
	}
	defer func() {
		im.lmu.Lock()
		delete(im.raw, fd)
		im.lmu.Unlock()
		unix.Close(fd)
	}()
	// How this connection is read and written: plain system calls on a
	// local client's socket, crypto/tls on the same thread for a remote
	// one (a reply's header, flags and pages then go in one record).
	recv := func(b []byte) (int, error) { return unix.Read(fd, b) }
	send := func(bufs [][]byte) error { _, err := writeAll(fd, bufs); return err }
	if tc != nil {
		recv = tc.Read
		var cat []byte // under wmu, as every send
		send = func(bufs [][]byte) error {
			cat = cat[:0]
			for _, b := range bufs {
				cat = append(cat, b...)
			}
			_, err := tc.Write(cat)
			return err
		}
	}
	im.s.c.clients.Add(1)
	im.s.c.connected.Add(1)
	defer im.s.c.connected.Add(^uint64(0))
	if mc != nil {
		im.remote.Add(1)
		defer im.remote.Add(-1)
		defer mc.gone(fd)
	}
	// Keep-alives go out whatever the replies do, so that a client can
	// tell this server, busy or starved of CPU, from one that is gone.
	var wmu sync.Mutex // one writer at a time on fd
	var answered atomic.Uint64
	stop := make(chan struct{})
	var alive sync.WaitGroup
	alive.Add(1)
	go im.keepAlive(send, &wmu, &answered, stop, &alive)
	defer func() {
		close(stop)
		alive.Wait() // before fd is closed and its number reused
	}()
	tv := unix.NsecToTimeval(im.s.write.Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	// Room for a few whole replies in flight: a window is up to 1 MiB.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)

	var joined time.Time // when this client's first request was read
	in := make([]byte, 64*wire.RequestSize)
	have := 0
	buf := make([]byte, wire.MaxBatch*uffd.PageSize)
	flags := make([]byte, wire.MaxBatch)
	hdr := make([]byte, 0, wire.ResponseSize)
	out := make([][]byte, 0, 2+wire.MaxBatch)
	for {
		n, err := recv(in[have:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			if have > 0 {
				// A torn request: garbage, or a client that died
				// mid-message. Either way it is gone.
				im.s.c.badRequests.Add(1)
			}
			return
		}
		have += n
		if joined.IsZero() {
			// The client joins the group before it asks for
			// anything: every page sent from now on went to it too.
			joined = time.Now()
		}
		next := 0
		for ; have-next >= wire.RequestSize; next += wire.RequestSize {
			q, err := wire.DecodeRequest(in[next : next+wire.RequestSize])
			if err == nil {
				err = q.Check(im.pages)
			}
			if err != nil {
				im.s.c.badRequests.Add(1)
				wmu.Lock()
				send([][]byte{wire.Response{Region: q.Region, First: q.First, Count: q.Count, Tag: q.Tag, Status: wire.StatusBadRequest}.Append(hdr[:0])})
				wmu.Unlock()
				return
			}
			if q.Flags&wire.RequestReport != 0 {
				if mc != nil {
					mc.report(fd, q.First)
				}
				continue // no reply
			}
			data, err := im.read(q, buf, flags[:q.Count])
			if err != nil {
				fmt.Fprintf(os.Stderr, "memtap server: %v\n", err)
				return // the client sees the connection close and fails
			}
			// To the group, unless the client missed the pages there,
			// or has no sibling left to share them with (the end of a
			// fork, or a lone clone): then on its stream.
			if mc != nil && q.Flags&wire.RequestUnicast == 0 && im.remote.Load() > 1 {
				var n int
				data, n = mc.send(q, flags[:q.Count], data, joined)
				im.s.c.pagesMulticast.Add(uint64(n))
				im.s.c.bytesMulticast.Add(uint64(n * mcdist.Size))
			}
			out = append(out[:0], wire.Response{Region: q.Region, First: q.First, Count: q.Count, Tag: q.Tag}.Append(hdr[:0]), flags[:q.Count])
			out = append(out, data...)
			// Count before sending: the client may look as soon as it
			// has the reply.
			im.s.c.requests.Add(1)
			im.s.c.pagesSent.Add(uint64(len(data)))
			im.s.c.pagesEmpty.Add(uint64(int(q.Count) - len(data)))
			im.s.c.bytesSent.Add(uint64(wire.ResponseSize + int(q.Count) + len(data)*uffd.PageSize))
			wmu.Lock()
			err = send(out)
			wmu.Unlock()
			if err != nil {
				return // gone, or not reading within the write timeout
			}
			answered.Add(1)
		}
		have = copy(in, in[next:have])
	}
}

// keepAlive sends a keep-alive every wire.AliveInterval until stop is
// closed or a send fails.
func (im *image) keepAlive(send func([][]byte) error, wmu *sync.Mutex, answered *atomic.Uint64, stop <-chan struct{}, done *sync.WaitGroup) {
	defer done.Done()
	t := time.NewTicker(wire.AliveInterval)
	defer t.Stop()
	b := make([]byte, 0, wire.ResponseSize)
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		wmu.Lock()
		err := send([][]byte{wire.Alive(answered.Load()).Append(b[:0])})
		wmu.Unlock()
		if err != nil {
			return
		}
	}
}

// rawFd returns a blocking duplicate of c's descriptor.
func rawFd(c net.Conn) (int, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, false
	}
	fd := -1
	rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if err != nil || fd < 0 {
		return -1, false
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return -1, false
	}
	return fd, true
}

// writeAll writes bufs to the blocking descriptor fd, resuming after short
// writes, and returns the bytes written.
func writeAll(fd int, bufs [][]byte) (int, error) {
	total := 0
	for len(bufs) > 0 {
		n, err := unix.Writev(fd, bufs)
		if n > 0 {
			total += n
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return total, err
		}
		for n > 0 {
			if n < len(bufs[0]) {
				bufs[0] = bufs[0][n:]
				break
			}
			n -= len(bufs[0])
			bufs = bufs[1:]
		}
	}
	return total, nil
}

// handshake runs the server's side of the handshake and reports whether the
// client proved it holds key. A failure is counted before the client can
// learn of it.
func (im *image) handshake(c net.Conn, key wire.Key, mc *mcast) bool {
	c.SetDeadline(time.Now().Add(im.s.handshake))
	defer c.SetDeadline(time.Time{})
	fail := func() bool {
		im.s.c.authFailures.Add(1)
		return false
	}
	nonce, err := wire.NewNonce()
	if err != nil {
		return fail()
	}
	if _, err := c.Write(wire.Hello{Nonce: nonce, Regions: im.pages}.Encode()); err != nil {
		return fail()
	}
	b := make([]byte, wire.AuthSize)
	if _, err := io.ReadFull(c, b); err != nil {
		return fail()
	}
	a, err := wire.DecodeAuth(b)
	if want := wire.ClientMAC(key, nonce, a.Nonce); err != nil || !hmac.Equal(a.MAC[:], want[:]) {
		fail()
		c.Write(wire.Welcome{Status: wire.WelcomeRefused}.Encode())
		return false
	}
	w := wire.Welcome{Status: wire.WelcomeOK, MAC: wire.ServerMAC(key, nonce, a.Nonce)}
	if mc != nil {
		w.Group, w.Port = mc.group, mc.port
	}
	if _, err = c.Write(w.Encode()); err != nil {
		return fail()
	}
	return true
}

// read fills flags for the pages q asks for and returns the data pages, in
// order, as slices of buf.
func (im *image) read(q wire.Request, buf []byte, flags []byte) ([][]byte, error) {
	if errp := im.broken.Load(); errp != nil {
		return nil, *errp
	}
	r, base := im.regions[q.Region], uintptr(im.layout[q.Region].Base)
	var liveBufs [][]byte
	var liveAddrs []uintptr
	im.mu.RLock()
	for i := range flags {
		p := q.First + uint64(i)
		slot := buf[i*uffd.PageSize : (i+1)*uffd.PageSize]
		switch {
		case !r.pop.Get(p):
			flags[i] = wire.PageAbsent
			continue
		case im.saved[uint64(q.Region)<<40|p] != nil:
			copy(slot, im.saved[uint64(q.Region)<<40|p])
		default:
			liveBufs = append(liveBufs, slot)
			liveAddrs = append(liveAddrs, base+uintptr(p)*uffd.PageSize)
		}
		flags[i] = wire.PageData
	}
	var err error
	if len(liveBufs) > 0 {
		err = readParent(im.pid, liveBufs, liveAddrs)
	}
	im.mu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("read region %d pages [%d, +%d): %w", q.Region, q.First, q.Count, err)
	}
	var data [][]byte
	for i, f := range flags {
		if f != wire.PageData {
			continue
		}
		slot := buf[i*uffd.PageSize : (i+1)*uffd.PageSize]
		if pages.Zero(slot) {
			flags[i] = wire.PageZero
			continue
		}
		data = append(data, slot)
	}
	return data, nil
}

// close stops serving, then stops copy-before-write and lifts every
// protection.
func (im *image) close() {
	im.lmu.Lock()
	im.closed = true
	for _, l := range im.listeners {
		l.Close()
	}
	for c := range im.conns {
		c.Close()
	}
	for fd := range im.raw {
		unix.Shutdown(fd, unix.SHUT_RDWR) // wakes its reader; the owner closes it
	}
	im.lmu.Unlock()
	im.clients.Wait()
	if mc := im.mc.Load(); mc != nil {
		mc.close()
	}

	unix.Write(im.stopW, []byte{0})
	<-im.wpDone
	for _, r := range im.layout {
		base, n := uintptr(r.Base), uintptr(r.Pages*uffd.PageSize)
		im.u.WriteProtect(base, n, false, false)
		im.u.Unregister(base, n)
	}
	im.u.Close()
	unix.Close(im.stopR)
	unix.Close(im.stopW)
	im.mu.Lock()
	for _, s := range im.slabs {
		unix.Munmap(s)
	}
	im.slabs, im.free, im.saved = nil, nil, nil
	im.mu.Unlock()
}
