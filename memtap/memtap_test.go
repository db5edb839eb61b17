package memtap_test

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/sfvmm/sfvmm/memtap"
	"github.com/sfvmm/sfvmm/memtap/internal/tlslink"
	"github.com/sfvmm/sfvmm/memtap/server"
	"github.com/sfvmm/sfvmm/memtap/uffd"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"golang.org/x/sys/unix"
)

const pageSize = 4096

func TestMain(m *testing.M) {
	memtap.Main()
	if mode := os.Getenv(childEnv); mode == "proxy" {
		os.Exit(recordingProxy(os.Args[1], os.Args[2]))
	} else if mode == "silent-server" {
		os.Exit(silentServer(os.Args[1], os.Args[2], os.Args[3]))
	} else if mode != "" {
		os.Exit(childMain(mode))
	}
	os.Exit(m.Run())
}

// pageSet is a PageSet of booleans.
type pageSet []bool

func (s pageSet) Len() uint64 { return uint64(len(s)) }

func (s pageSet) Runs(fn func(start, n uint64)) {
	for i := 0; i < len(s); {
		if !s[i] {
			i++
			continue
		}
		j := i
		for j < len(s) && s[j] {
			j++
		}
		fn(uint64(i), uint64(j-i))
		i = j
	}
}

// Page kinds of the test image: page i of a region is
const (
	kindData   = iota // a pattern unique to (region, page, seed)
	kindZero          // populated, all zero
	kindAbsent        // never populated
)

func kind(i int) int {
	switch {
	case i%8 == 7:
		return kindAbsent
	case i%16 == 3:
		return kindZero
	}
	return kindData
}

// pattern writes the pre-fork content of page i of region r into p.
func pattern(p []byte, r, i int) {
	if kind(i) != kindData {
		clear(p)
		return
	}
	for k := range p {
		p[k] = byte(r*31 + i*7 + k)
	}
	binary.LittleEndian.PutUint64(p, uint64(r)<<32|uint64(i)|1<<63)
}

func mapRAM(t testing.TB, pages int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, pages*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// parent is a frozen parent being served.
type parent struct {
	ram    [][]byte
	pop    []pageSet
	srv    *server.Server
	image  *server.Image
	key    wire.Key
	tcp    string
	unix   string
	group  *net.UDPAddr // the TCP clients' multicast group, if any
	from   net.IP       // the interface the group is sent from (default loopback)
	counts struct{ data, zero, absent int }
}

var regionPages = []int{1024, 64}

// newParent fills parent RAM, freezes it and serves it on TCP and Unix
// sockets. The parent then overwrites every page, populated or not.
func newParent(t *testing.T) *parent {
	t.Helper()
	return newParentWriting(t, func(int) bool { return true })
}

// newParentWriting is newParent with a parent that, after the freeze,
// overwrites page i of each region where writes(i).
func newParentWriting(t *testing.T, writes func(i int) bool) *parent {
	t.Helper()
	return newParentOf(t, &parent{}, writes)
}

// newParentOf makes p a parent whose RAM the given pages are written to
// after the freeze; with p.group set its TCP clients are a multicast
// family.
func newParentOf(t *testing.T, p *parent, writes func(i int) bool) *parent {
	t.Helper()
	for r, n := range regionPages {
		ram := mapRAM(t, n)
		pop := make(pageSet, n)
		for i := range n {
			if kind(i) == kindAbsent {
				continue
			}
			pop[i] = true
			pattern(ram[i*pageSize:(i+1)*pageSize], r, i)
			if kind(i) == kindZero {
				ram[i*pageSize] = 0 // populate it
				p.counts.zero++
			} else {
				p.counts.data++
			}
		}
		p.ram = append(p.ram, ram)
		p.pop = append(p.pop, pop)
	}
	for _, n := range regionPages {
		for i := range n {
			if kind(i) == kindAbsent {
				p.counts.absent++
			}
		}
	}
	var err error
	p.srv, err = server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.srv.Close() })
	var regions []server.Region
	for r := range p.ram {
		regions = append(regions, server.Region{Host: p.ram[r], Populated: p.pop[r]})
	}
	if p.image, err = p.srv.Freeze(regions); err != nil {
		t.Fatal(err)
	}
	if p.key, err = wire.NewKey(); err != nil {
		t.Fatal(err)
	}
	lt, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.tcp = lt.Addr().String()
	if p.group != nil {
		if p.from == nil {
			p.from = net.IPv4(127, 0, 0, 1)
		}
		if err := p.image.Multicast(p.from, p.group, p.key); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.image.Serve(lt, p.key); err != nil {
		t.Fatal(err)
	}
	p.unix = filepath.Join(t.TempDir(), "mem.sock")
	lu, err := net.Listen("unix", p.unix)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.image.Serve(lu, p.key); err != nil {
		t.Fatal(err)
	}
	// The parent runs on and writes.
	for _, ram := range p.ram {
		for i := range len(ram) / pageSize {
			if writes(i) {
				clear(ram[i*pageSize : (i+1)*pageSize])
				ram[i*pageSize] = 0xEE
			}
		}
	}
	return p
}

// direct lets cfg read the parent (this process) directly.
func (p *parent) direct(t *testing.T, cfg *memtap.Config) {
	t.Helper()
	var bases []uint64
	for _, ram := range p.ram {
		bases = append(bases, uint64(uintptr(unsafe.Pointer(&ram[0]))))
	}
	pm, err := memtap.OpenParent(os.Getpid(), bases)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pm.Close() })
	cfg.Parent = pm
}

func (p *parent) config(network string, child [][]byte) memtap.Config {
	cfg := memtap.Config{Network: network, Address: p.tcp, Key: p.key}
	if network == "unix" {
		cfg.Address = p.unix
	}
	for r := range child {
		cfg.Regions = append(cfg.Regions, memtap.Region{Host: child[r], Populated: p.pop[r]})
	}
	return cfg
}

func newChildRAM(t testing.TB) [][]byte {
	var ram [][]byte
	for _, n := range regionPages {
		ram = append(ram, mapRAM(t, n))
	}
	return ram
}

// verify checks every page of child RAM against the pre-fork image,
// touching pages in order (or reverse order).
func verify(t *testing.T, child [][]byte, reverse bool) {
	t.Helper()
	want := make([]byte, pageSize)
	for r, ram := range child {
		n := len(ram) / pageSize
		for k := range n {
			i := k
			if reverse {
				i = n - 1 - k
			}
			pattern(want, r, i)
			if got := ram[i*pageSize : (i+1)*pageSize]; !bytes.Equal(got, want) {
				t.Fatalf("region %d page %d: got %x..., want %x...", r, i, got[:16], want[:16])
			}
		}
	}
}

func TestForkedMemory(t *testing.T) {
	p := newParent(t)
	saved := p.srv.Stats().PagesSaved
	if want := uint64(p.counts.data + p.counts.zero); saved != want {
		t.Errorf("server saved %d pages before the parent's writes, want the %d populated ones", saved, want)
	}
	tests := []struct {
		name      string
		network   string
		window    int
		maxWindow int
		reverse   bool
	}{
		{"tcp no prefetch", "tcp", 1, 1, false},
		{"tcp prefetch", "tcp", 16, 256, false},
		{"unix prefetch", "unix", 16, 256, false},
		{"unix prefetch reverse", "unix", 32, 32, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			child := newChildRAM(t)
			cfg := p.config(tt.network, child)
			cfg.Window, cfg.MaxWindow = tt.window, tt.maxWindow
			c, err := memtap.Start(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			verify(t, child, tt.reverse)
			s := c.Stats()
			t.Logf("stats: %+v", s)
			// Every data page comes over the wire exactly once; zero and
			// absent pages never do.
			if s.PagesFetched != uint64(p.counts.data) {
				t.Errorf("fetched %d pages, want the %d data pages", s.PagesFetched, p.counts.data)
			}
			if s.PagesZeroFilled != uint64(p.counts.zero+p.counts.absent) {
				t.Errorf("zero-filled %d pages, want %d zero + %d absent", s.PagesZeroFilled, p.counts.zero, p.counts.absent)
			}
			maxBytes := uint64(p.counts.data)*pageSize + s.Requests*(wire.ResponseSize+wire.MaxBatch) + 1024
			if s.BytesReceived < uint64(p.counts.data)*pageSize || s.BytesReceived > maxBytes {
				t.Errorf("received %d bytes for %d data pages", s.BytesReceived, p.counts.data)
			}
			var hist uint64
			for _, n := range s.FaultLatency {
				hist += n
			}
			if hist != s.Faults || s.Faults == 0 {
				t.Errorf("histogram holds %d faults of %d", hist, s.Faults)
			}
			if tt.maxWindow == 1 && s.PagesPrefetched != 0 {
				t.Errorf("prefetched %d pages with prefetch off", s.PagesPrefetched)
			}
			if tt.maxWindow > 1 && (s.PagesPrefetched == 0 || s.Faults*4 > uint64(p.counts.data)) {
				t.Errorf("prefetch: %d faults, %d pages prefetched for %d data pages", s.Faults, s.PagesPrefetched, p.counts.data)
			}
		})
	}
}

// A child on the parent's host reads the pages the parent has not written
// since the fork straight from the parent's memory, and the others, which
// the server saved, through the server.
func TestDirectParentReads(t *testing.T) {
	written := func(i int) bool { return i%3 == 0 }
	p := newParentWriting(t, written)
	var unwrittenData uint64
	for _, n := range regionPages {
		for i := range n {
			if kind(i) == kindData && !written(i) {
				unwrittenData++
			}
		}
	}
	for _, window := range []int{1, 16} {
		t.Run(fmt.Sprintf("window %d", window), func(t *testing.T) {
			child := newChildRAM(t)
			cfg := p.config("unix", child)
			cfg.Window, cfg.MaxWindow = window, window
			p.direct(t, &cfg)
			c, err := memtap.Start(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			verify(t, child, false)
			s := c.Stats()
			t.Logf("stats: %+v", s)
			if s.PagesDirect != unwrittenData {
				t.Errorf("%d pages read directly, want the %d data pages the parent did not write", s.PagesDirect, unwrittenData)
			}
			if s.PagesFetched != uint64(p.counts.data) {
				t.Errorf("fetched %d pages, want the %d data pages", s.PagesFetched, p.counts.data)
			}
			if s.PagesZeroFilled != uint64(p.counts.zero+p.counts.absent) {
				t.Errorf("zero-filled %d pages, want %d zero + %d absent", s.PagesZeroFilled, p.counts.zero, p.counts.absent)
			}
			if s.Requests == 0 || s.BytesReceived < (uint64(p.counts.data)-unwrittenData)*pageSize {
				t.Errorf("%d requests, %d bytes received: the written pages must come from the server", s.Requests, s.BytesReceived)
			}
			// The last figures stay readable after Close. (A fault read
			// after its page was filled may still be counted after s.)
			c.Close()
			if after := c.Stats(); after.PagesDirect != s.PagesDirect || after.PagesFetched != s.PagesFetched || after.Faults < s.Faults {
				t.Errorf("stats after Close: %+v, want the last figures %+v", after, s)
			}
		})
	}
}

func TestUnpopulatedNotFetched(t *testing.T) {
	p := newParent(t)
	child := newChildRAM(t)
	c, err := memtap.Start(p.config("tcp", child))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Touch only never-populated pages: nothing may be asked of the server.
	for r, ram := range child {
		for i := 7; i < len(ram)/pageSize; i += 8 {
			if ram[i*pageSize] != 0 || ram[(i+1)*pageSize-1] != 0 {
				t.Fatalf("region %d page %d is not zero", r, i)
			}
		}
	}
	s := c.Stats()
	if s.Requests != 0 || s.PagesFetched != 0 || s.PagesZeroFilled != uint64(p.counts.absent) {
		t.Errorf("touching %d absent pages: %+v; want no requests and %d zero-filled", p.counts.absent, s, p.counts.absent)
	}
	if sent := p.srv.Stats().PagesSent; sent != 0 {
		t.Errorf("server sent %d pages", sent)
	}
}

func TestConcurrentClients(t *testing.T) {
	p := newParent(t)
	const n = 4
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for k := range n {
		child := newChildRAM(t)
		network := []string{"tcp", "unix"}[k%2]
		c, err := memtap.Start(p.config(network, child))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := make([]byte, pageSize)
			for r, ram := range child {
				for i := range len(ram) / pageSize {
					pattern(want, r, i)
					if !bytes.Equal(ram[i*pageSize:(i+1)*pageSize], want) {
						errs <- fmt.Errorf("client %d: region %d page %d differs", k, r, i)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s := p.srv.Stats(); s.Clients != n || s.PagesSent != n*uint64(p.counts.data) {
		t.Errorf("server: %+v; want %d clients and %d pages sent", s, n, n*p.counts.data)
	}
}

func TestWrongKeyRefused(t *testing.T) {
	p := newParent(t)
	child := newChildRAM(t)
	cfg := p.config("tcp", child)
	cfg.Key[0] ^= 1
	c, err := memtap.Start(cfg)
	if err == nil {
		c.Close()
		t.Fatal("a client with the wrong key was accepted")
	}
	// Over TCP the TLS handshake, keyed by the family key, fails first.
	if !strings.Contains(err.Error(), "does not hold the clone family's key") {
		t.Errorf("error %q does not say the key was wrong", err)
	}
	// The client finds the server's certificate wrong and leaves; the
	// server counts the failure once the client's alert reaches it,
	// which on a loaded host may be after Start has returned.
	for deadline := time.Now().Add(5 * time.Second); p.srv.Stats().AuthFailures == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if s := p.srv.Stats(); s.AuthFailures != 1 || s.Clients != 0 {
		t.Errorf("server: %d auth failures, %d clients; want 1, 0", s.AuthFailures, s.Clients)
	}
	// The refusal leaves the RAM untouched and registrable again.
	c, err = memtap.Start(p.config("tcp", child))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	verify(t, child, false)
}

// handshake connects to addr as a client holding key.
func handshake(t *testing.T, network, addr string, key wire.Key) net.Conn {
	t.Helper()
	conn, err := tlslink.Dial(network, addr, key)
	if err != nil {
		t.Fatal(err)
	}
	h, err := wire.ReadHello(conn)
	if err != nil {
		t.Fatal(err)
	}
	nonce, _ := wire.NewNonce()
	conn.Write(wire.Auth{Nonce: nonce, MAC: wire.ClientMAC(key, h.Nonce, nonce)}.Encode())
	b := make([]byte, wire.WelcomeSize)
	if _, err := io.ReadFull(conn, b); err != nil {
		t.Fatal(err)
	}
	if w, err := wire.DecodeWelcome(b); err != nil || w.Status != wire.WelcomeOK {
		t.Fatalf("welcome: %+v, %v", w, err)
	}
	return conn
}

func TestMalformedRequestsRefused(t *testing.T) {
	p := newParent(t)
	tests := []struct {
		name    string
		payload []byte
		reply   bool // a BadRequest reply comes before the close
	}{
		{"garbage", bytes.Repeat([]byte("garbage!"), 4)[:wire.RequestSize], true},
		{"page out of range", wire.Request{Region: 0, First: 1020, Count: 8}.Append(nil), true},
		{"region out of range", wire.Request{Region: 2, First: 0, Count: 1}.Append(nil), true},
		{"too many pages", wire.Request{Region: 0, First: 0, Count: wire.MaxBatch + 1}.Append(nil), true},
		{"torn request", wire.Request{Count: 1}.Append(nil)[:10], false},
	}
	before := p.srv.Stats().BadRequests
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := handshake(t, "tcp", p.tcp, p.key)
			defer conn.Close()
			conn.Write(tt.payload)
			if !tt.reply {
				conn.(interface{ CloseWrite() error }).CloseWrite()
			}
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			rest, err := io.ReadAll(conn)
			if err != nil {
				t.Fatalf("server did not close the connection: %v", err)
			}
			if tt.reply {
				r, err := wire.DecodeResponse(rest)
				if err != nil || r.Status != wire.StatusBadRequest {
					t.Errorf("reply %x (%v), want a BadRequest response and nothing else", rest, err)
				}
			}
		})
	}
	// Misbehaving clients did not hurt a well-behaved one.
	child := newChildRAM(t)
	c, err := memtap.Start(p.config("unix", child))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	verify(t, child, false)
	if got := p.srv.Stats().BadRequests - before; got != uint64(len(tests)) {
		t.Errorf("server counted %d bad requests, want %d", got, len(tests))
	}
}

// fakeServer accepts one client, completes the handshake for a one-region
// image of pages pages, then hands the connection to serve.
func fakeServer(t *testing.T, key wire.Key, pages uint64, serve func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		raw, err := l.Accept()
		if err != nil {
			return
		}
		cfg, err := tlslink.Config(key, true)
		if err != nil {
			raw.Close()
			return
		}
		conn := tls.Server(raw, cfg)
		defer conn.Close()
		welcome(conn, key, pages)
		serve(conn)
	}()
	return l.Addr().String()
}

// welcome runs a server's side of the handshake on conn, for an image of
// one region of pages.
func welcome(conn net.Conn, key wire.Key, pages uint64) {
	nonce, _ := wire.NewNonce()
	conn.Write(wire.Hello{Nonce: nonce, Regions: []uint64{pages}}.Encode())
	b := make([]byte, wire.AuthSize)
	io.ReadFull(conn, b)
	a, _ := wire.DecodeAuth(b)
	conn.Write(wire.Welcome{MAC: wire.ServerMAC(key, nonce, a.Nonce)}.Encode())
}

// silentServerProc starts a process (this test binary) that serves a
// Unix socket, answers the handshake and then nothing, sending no
// keep-alives either. mode "idle" leaves it asleep; "busy" has a thread
// spin, as a server starved of CPU would still run; "busy-mute" spins and
// does not even answer the handshake. It returns the socket's path.
func silentServerProc(t *testing.T, key wire.Key, pages uint64, mode string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "silent.sock")
	startChild(t, "silent-server", path, fmt.Sprintf("%x/%d", key[:], pages), mode)
	return path
}

// startChild starts this test binary in mode with args, and returns it
// and the first word it prints, once it has: that it is ready, and maybe
// where. The test's end kills it.
func startChild(t *testing.T, mode string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	exe, _ := os.Executable()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait() // an error if the test waited for it already
	})
	var word string
	if _, err := fmt.Fscanln(out, &word); err != nil {
		t.Fatalf("%s child: %v", mode, err)
	}
	return cmd, word
}

func silentServer(path, keyPages, mode string) int {
	var kb []byte
	var pages uint64
	if _, err := fmt.Sscanf(keyPages, "%x/%d", &kb, &pages); err != nil || len(kb) != len(wire.Key{}) {
		fmt.Println("bad key/pages", keyPages, err)
		return 2
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Println(err)
		return 2
	}
	fmt.Println("ready")
	conn, err := l.Accept()
	if err != nil {
		return 2
	}
	if mode != "busy-mute" {
		welcome(conn, wire.Key(kb), pages)
	}
	if mode != "idle" {
		go func() {
			for {
			}
		}()
	}
	io.Copy(io.Discard, conn)
	return 0
}

// hungServer reads requests and never answers; with keepAlive it sends
// keep-alives meanwhile, as a live server does.
func hungServer(t *testing.T, key wire.Key, pages uint64, keepAlive bool) string {
	return fakeServer(t, key, pages, func(conn net.Conn) {
		if keepAlive {
			go func() {
				for {
					time.Sleep(wire.AliveInterval)
					if _, err := conn.Write(wire.Alive(0).Append(nil)); err != nil {
						return
					}
				}
			}()
		}
		io.Copy(io.Discard, conn)
	})
}

func TestServerLoss(t *testing.T) {
	const timeout = 2 * time.Second
	tests := []struct {
		name string
		// setup returns the config and a function that kills the server
		// once the child has started faulting.
		setup func(t *testing.T, child []byte) (memtap.Config, func())
		want  []string // in the error
		// starved: the silence is counted as a starving server's
		// (Stats.ServerStarved). early: the server goes before the
		// child touches its RAM, which it would otherwise have had
		// whole by then.
		starved, early bool
	}{
		{"server closed", func(t *testing.T, child []byte) (memtap.Config, func()) {
			p := newParent(t)
			cfg := p.config("tcp", [][]byte{child, mapRAM(t, regionPages[1])})
			return cfg, func() { p.srv.Close() }
		}, []string{"closed the connection"}, false, false},
		{"server closed, parent read directly", func(t *testing.T, child []byte) (memtap.Config, func()) {
			// The parent writes nothing before the server goes; then
			// it overwrites everything. Its protection went with the
			// server, so no direct read may be installed after that.
			p := newParentWriting(t, func(int) bool { return false })
			cfg := p.config("unix", [][]byte{child, mapRAM(t, regionPages[1])})
			p.direct(t, &cfg)
			return cfg, func() {
				p.srv.Close()
				for _, ram := range p.ram {
					for i := range ram {
						ram[i] = 0xEE
					}
				}
			}
		}, []string{"closed the connection"}, false, false},
		{"server hung", func(t *testing.T, child []byte) (memtap.Config, func()) {
			key, _ := wire.NewKey()
			addr := hungServer(t, key, uint64(regionPages[0]), false)
			return memtap.Config{Network: "tcp", Address: addr, Key: key, Regions: []memtap.Region{{Host: child}}}, func() {}
		}, []string{"no answer in 6s (nor any keep-alive); TCP: last data received"}, false, false}, // 3 × timeout between hosts
		{"server on this host stopped", func(t *testing.T, child []byte) (memtap.Config, func()) {
			p := newParent(t)
			cfg := p.config("unix", [][]byte{child, mapRAM(t, regionPages[1])})
			pid := p.srv.PID()
			t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
			return cfg, func() { syscall.Kill(pid, syscall.SIGSTOP) }
		}, []string{"no answer in 2s (nor any keep-alive); server process", ": stopped"}, false, true},
		{"server on this host asleep", func(t *testing.T, child []byte) (memtap.Config, func()) {
			key, _ := wire.NewKey()
			return memtap.Config{Network: "unix", Address: silentServerProc(t, key, uint64(regionPages[0]), "idle"), Key: key,
				Regions: []memtap.Region{{Host: child}}}, func() {}
		}, []string{"no answer in 2s (nor any keep-alive); server process", ": asleep, no CPU time used in"}, false, false},
		{"server on this host running but silent", func(t *testing.T, child []byte) (memtap.Config, func()) {
			key, _ := wire.NewKey()
			return memtap.Config{Network: "unix", Address: silentServerProc(t, key, uint64(regionPages[0]), "busy"), Key: key,
				Regions: []memtap.Region{{Host: child}}}, func() {}
		}, []string{"no answer in 4s, while its process ran"}, true, false},
		{"server alive but stuck", func(t *testing.T, child []byte) (memtap.Config, func()) {
			key, _ := wire.NewKey()
			addr := hungServer(t, key, uint64(regionPages[0]), true)
			return memtap.Config{Network: "tcp", Address: addr, Key: key, Regions: []memtap.Region{{Host: child}}}, func() {}
		}, []string{"alive but has answered nothing in 4s"}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			child := mapRAM(t, regionPages[0])
			cfg, kill := tt.setup(t, child)
			cfg.Timeout, cfg.StuckAfter = timeout, 4*time.Second
			c, err := memtap.Start(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tt.early {
				kill()
			}
			// A toucher walks RAM with copy() (memmove, where the
			// runtime cannot preempt it) until it is stopped by a fault,
			// and checks every page it gets against the image.
			released := make(chan any, 1)
			var wrong atomic.Int64
			wrong.Store(-1)
			go func() {
				debug.SetPanicOnFault(true)
				defer func() { released <- recover() }()
				buf, want := make([]byte, pageSize), make([]byte, pageSize)
				for i := 0; ; i = (i + 37) % regionPages[0] {
					copy(buf, child[i*pageSize:])
					if pattern(want, 0, i); !bytes.Equal(buf, want) {
						wrong.CompareAndSwap(-1, int64(i))
					}
				}
			}()
			time.Sleep(50 * time.Millisecond)
			start := time.Now()
			if !tt.early {
				kill()
			}
			select {
			case <-c.Done():
			case <-time.After(3*timeout + 5*time.Second):
				t.Fatal("no error from memtap in bounded time")
			}
			t.Logf("error after %v: %v", time.Since(start), c.Err())
			for _, want := range tt.want {
				if err := c.Err(); err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("error %v, want one saying %q", err, want)
				}
			}
			if n := c.Stats().ServerStarved; n != map[bool]uint64{true: 1}[tt.starved] {
				t.Errorf("%d silences counted as a starving server's", n)
			}
			// The toucher is still blocked, never fed a wrong page; the
			// fence releases it with a fault.
			select {
			case v := <-released:
				t.Fatalf("toucher left before the fence: %v", v)
			default:
			}
			if i := wrong.Load(); i >= 0 {
				t.Errorf("page %d was installed with contents other than the image's", i)
			}
			if err := c.Fence(); err != nil {
				t.Fatal(err)
			}
			select {
			case v := <-released:
				// debug.SetPanicOnFault's panic carries the address.
				f, ok := v.(interface{ Addr() uintptr })
				if base := uintptr(unsafe.Pointer(&child[0])); !ok || f.Addr() < base || f.Addr() >= base+uintptr(len(child)) {
					t.Errorf("toucher ended with %v, want a fault in guest RAM", v)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("fence did not release the blocked toucher")
			}
		})
	}
}

// A server on this host that does not answer the handshake: a stopped
// one fails it within Config.Timeout, one whose process runs is waited
// for up to Config.StuckAfter.
func TestHandshakeSilence(t *testing.T) {
	const timeout, stuck = 2 * time.Second, 6 * time.Second
	tests := []struct {
		name   string
		server func(t *testing.T) (addr string, key wire.Key)
		after  time.Duration // the error comes no sooner
		want   string
	}{
		{"stopped", func(t *testing.T) (string, wire.Key) {
			p := newParent(t)
			pid := p.srv.PID()
			t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
			syscall.Kill(pid, syscall.SIGSTOP)
			return p.unix, p.key
		}, timeout, ": stopped"},
		{"running", func(t *testing.T) (string, wire.Key) {
			key, _ := wire.NewKey()
			return silentServerProc(t, key, uint64(regionPages[0]), "busy-mute"), key
		}, stuck, " ran throughout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, key := tt.server(t)
			start := time.Now()
			c, err := memtap.Start(memtap.Config{Network: "unix", Address: addr, Key: key, Timeout: timeout, StuckAfter: stuck,
				Regions: []memtap.Region{{Host: mapRAM(t, regionPages[0])}}})
			took := time.Since(start)
			if err == nil {
				c.Close()
				t.Fatal("handshake with a silent server succeeded")
			}
			t.Logf("error after %v: %v", took, err)
			if !strings.Contains(err.Error(), "handshake: read hello") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one about the handshake saying %q", err, tt.want)
			}
			if took < tt.after || took > tt.after+3*time.Second {
				t.Errorf("error after %v, want it after %v", took, tt.after)
			}
		})
	}
}

// A child VMM in its own process (this test binary re-executed), for the
// cases that must not share a process with the test: a fault storm that
// would deadlock the test if memtap were wrong, and a VMM starved of Ps.
const childEnv = "MEMTAP_TEST_CHILD"

type childConfig struct {
	Network, Address string
	Key              wire.Key
	Pages            []int
	Populated        [][]bool
	Timeout          time.Duration
	KillAfter        time.Duration
	Window           int
}

func runChild(t *testing.T, mode string, cc childConfig, limit time.Duration) (string, error, time.Duration) {
	t.Helper()
	b, _ := json.Marshal(cc)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "MEMTAP_TEST_CONFIG="+string(b))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(limit, func() { cmd.Process.Kill() })
	err := cmd.Wait()
	timer.Stop()
	return out.String(), err, time.Since(start)
}

func childMain(mode string) int {
	var cc childConfig
	if err := json.Unmarshal([]byte(os.Getenv("MEMTAP_TEST_CONFIG")), &cc); err != nil {
		fmt.Println(err)
		return 2
	}
	switch mode {
	case "parent-storm":
		return parentStorm()
	case "in-process":
		return inProcessStorm()
	}
	cfg := memtap.Config{Network: cc.Network, Address: cc.Address, Key: cc.Key, Timeout: cc.Timeout,
		KillAfter: cc.KillAfter, Window: cc.Window, MaxWindow: cc.Window}
	var ram [][]byte
	for r, n := range cc.Pages {
		b, err := unix.Mmap(-1, 0, n*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			fmt.Println(err)
			return 2
		}
		ram = append(ram, b)
		cfg.Regions = append(cfg.Regions, memtap.Region{Host: b, Populated: pageSet(cc.Populated[r])})
	}
	switch mode {
	case "storm":
		runtime.GOMAXPROCS(2)
	case "starve":
		runtime.GOMAXPROCS(1)
	}
	c, err := memtap.Start(cfg)
	if err != nil {
		fmt.Println(err)
		return 2
	}
	switch mode {
	case "storm":
		// 16 goroutines copy from 16 different missing pages at once,
		// in memmove, eight times GOMAXPROCS.
		const g = 16
		var ready, done sync.WaitGroup
		ready.Add(g)
		done.Add(g)
		gate := make(chan struct{})
		bad := make(chan string, g)
		for k := range g {
			go func() {
				defer done.Done()
				want := make([]byte, pageSize)
				got := make([]byte, pageSize)
				ready.Done()
				<-gate
				// Each goroutine owns pages k, k+g, ... of region 0.
				for i := k; i < cc.Pages[0]; i += g {
					copy(got, ram[0][i*pageSize:(i+1)*pageSize])
					pattern(want, 0, i)
					if !bytes.Equal(got, want) {
						bad <- fmt.Sprintf("page %d differs", i)
						return
					}
				}
			}()
		}
		ready.Wait()
		close(gate)
		done.Wait()
		close(bad)
		for b := range bad {
			fmt.Println(b)
			return 1
		}
		s := c.Stats()
		fmt.Printf("storm ok: %d faults, %d fetched, multicast %d from siblings %d retried %d forged %d replayed %d left %d\n",
			s.Faults, s.PagesFetched, s.PagesMulticast, s.PagesFromSiblings, s.PagesRetried, s.DatagramsForged, s.DatagramsReplayed, s.MulticastOff)
		c.Close()
		return 0
	case "starve":
		// The only P is held by a thread blocked in memmove on a page
		// that never comes: this process cannot take memtap's error.
		go func() {
			buf := make([]byte, pageSize)
			copy(buf, ram[0])
		}()
		select {
		case <-c.Done():
			fmt.Printf("child got the error: %v\n", c.Err())
			return 3
		case <-time.After(time.Minute):
			fmt.Println("child still alive")
			return 4
		}
	}
	return 2
}

// parentStorm is a parent VMM whose Go code writes its frozen RAM from 16
// goroutines at once under GOMAXPROCS=2: every write is a write-protect
// fault whose handler must run while all Ps are held by blocked writers.
// A client in the same process then reads the image back.
func parentStorm() int {
	runtime.GOMAXPROCS(2)
	const pages, g = 2048, 16
	ram, err := unix.Mmap(-1, 0, pages*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println(err)
		return 2
	}
	for i := range pages {
		if kind(i) != kindAbsent {
			pattern(ram[i*pageSize:(i+1)*pageSize], 0, i)
		}
	}
	srv, err := server.New(server.Config{})
	if err != nil {
		fmt.Println(err)
		return 2
	}
	defer srv.Close()
	im, err := srv.Freeze([]server.Region{{Host: ram}}) // populated: found by mincore
	if err != nil {
		fmt.Println(err)
		return 2
	}
	var done sync.WaitGroup
	gate := make(chan struct{})
	for k := range g {
		done.Add(1)
		go func() {
			defer done.Done()
			junk := bytes.Repeat([]byte{0xEE}, pageSize)
			<-gate
			for i := k; i < pages; i += g {
				copy(ram[i*pageSize:], junk)
			}
		}()
	}
	close(gate)
	done.Wait()
	populated := 0
	for i := range pages {
		if kind(i) != kindAbsent {
			populated++
		}
	}
	if s := srv.Stats(); s.PagesSaved != uint64(populated) {
		fmt.Printf("saved %d pages, want %d\n", s.PagesSaved, populated)
		return 1
	}
	dir, _ := os.MkdirTemp("", "memtap")
	defer os.RemoveAll(dir)
	l, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		fmt.Println(err)
		return 2
	}
	key, _ := wire.NewKey()
	if err := im.Serve(l, key); err != nil {
		fmt.Println(err)
		return 2
	}
	child, _ := unix.Mmap(-1, 0, pages*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	c, err := memtap.Start(memtap.Config{Network: "unix", Address: filepath.Join(dir, "s"), Key: key, Regions: []memtap.Region{{Host: child}}})
	if err != nil {
		fmt.Println(err)
		return 2
	}
	defer c.Close()
	want := make([]byte, pageSize)
	for i := range pages {
		pattern(want, 0, i)
		if !bytes.Equal(child[i*pageSize:(i+1)*pageSize], want) {
			fmt.Printf("page %d differs from the image\n", i)
			return 1
		}
	}
	fmt.Printf("parent storm ok: %+v\n", srv.Stats())
	return 0
}

// inProcessStorm is the storm of the "storm" mode against a handler that
// is a goroutine of the faulting process (LockOSThread'd, copying from a
// local buffer): the design memtap avoids. It deadlocks.
func inProcessStorm() int {
	runtime.GOMAXPROCS(2)
	const pages, g = 1024, 16
	mem, err := unix.Mmap(-1, 0, pages*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println(err)
		return 2
	}
	u, err := uffd.New(unix.O_CLOEXEC)
	if err == nil {
		_, err = u.API(0)
	}
	if err == nil {
		_, err = u.Register(uintptr(unsafe.Pointer(&mem[0])), pages*pageSize, uffd.ModeMissing)
	}
	if err != nil {
		fmt.Println(err)
		return 2
	}
	src := make([]byte, pageSize)
	go func() {
		runtime.LockOSThread()
		msgs := make([]uffd.Msg, 16)
		for {
			n, err := u.Read(msgs)
			if err != nil {
				return
			}
			for _, m := range msgs[:n] {
				u.Copy(uintptr(m.Address)&^(pageSize-1), uintptr(unsafe.Pointer(&src[0])), pageSize, 0)
			}
		}
	}()
	var done sync.WaitGroup
	for k := range g {
		done.Add(1)
		go func() {
			defer done.Done()
			buf := make([]byte, pageSize)
			for i := k; i < pages; i += g {
				copy(buf, mem[i*pageSize:])
			}
		}()
	}
	done.Wait()
	fmt.Println("in-process storm completed")
	return 0
}

// TestGOMAXPROCSFaultStorm is the Go-runtime pitfall, adversarially, on
// both sides: GOMAXPROCS=2 and 16 goroutines faulting at once inside
// copy() (memmove, where the runtime cannot preempt them), in a child VMM
// on missing pages (prefetch off, so that every page faults) and in a
// parent on write-protected ones. Each runs in its own process with a
// wall-clock limit, so that a deadlock fails the test instead of hanging it.
func TestGOMAXPROCSFaultStorm(t *testing.T) {
	p := newParent(t)
	cc := childConfig{Network: "unix", Address: p.unix, Key: p.key, Pages: regionPages, Window: 1}
	for _, pop := range p.pop {
		cc.Populated = append(cc.Populated, pop)
	}
	tests := []struct{ mode, want string }{
		{"storm", "storm ok"},
		{"parent-storm", "parent storm ok"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			out, err, took := runChild(t, tt.mode, cc, 60*time.Second)
			t.Logf("%s (%v): %s", tt.mode, took, out)
			if err != nil || !strings.Contains(out, tt.want) {
				t.Fatalf("%s under GOMAXPROCS=2: %v", tt.mode, err)
			}
		})
	}
	// The control: the same storm against an in-process handler hangs
	// (it is killed at the limit), which is what makes the storm above
	// adversarial. Whether it hangs is a race (the handler wins if it
	// gets a P before every P holds a faulting thread), so it has three
	// tries. If it never hangs, the Go runtime has changed and this test
	// no longer proves anything.
	t.Run("in-process control", func(t *testing.T) {
		for try := 1; try <= 3; try++ {
			out, err, took := runChild(t, "in-process", cc, 3*time.Second)
			t.Logf("in-process handler, try %d (%v): %v %s", try, took, err, out)
			if err != nil && !strings.Contains(out, "completed") {
				return
			}
		}
		t.Errorf("the in-process handler survived the storm three times: the storm is not adversarial")
	})
}

func TestStarvedVMMIsKilled(t *testing.T) {
	key, _ := wire.NewKey()
	addr := hungServer(t, key, 16, false)
	cc := childConfig{Network: "tcp", Address: addr, Key: key, Pages: []int{16}, Populated: [][]bool{nil},
		Timeout: 2 * time.Second, KillAfter: time.Second}
	cc.Populated[0] = make([]bool, 16)
	for i := range cc.Populated[0] {
		cc.Populated[0][i] = true
	}
	out, err, took := runChild(t, "starve", cc, 30*time.Second)
	t.Logf("child (%v): %s", took, out)
	if !strings.Contains(out, "no answer") {
		t.Errorf("the child's output does not give the reason")
	}
	var ee *exec.ExitError
	switch {
	case !errors.As(err, &ee):
		t.Fatalf("child: %v", err)
	case took > 10*time.Second:
		t.Errorf("child took %v to end, want about Timeout+KillAfter = 3s", took)
	case ee.ExitCode() == 3:
		t.Logf("the child took the error itself")
	case ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL:
		t.Errorf("child ended with %v, want SIGKILL from the helper or exit 3", err)
	}
}

// A server that is slow, taking three times the timeout to answer, but
// sends keep-alives meanwhile (busy, or starved of CPU) is waited for: the
// child gets its pages and no error.
func TestSlowServerWaitedFor(t *testing.T) {
	const timeout, delay = 2 * time.Second, 5 * time.Second
	key, _ := wire.NewKey()
	addr := fakeServer(t, key, uint64(regionPages[0]), func(conn net.Conn) {
		var mu sync.Mutex
		answered := uint64(0)
		go func() {
			for {
				time.Sleep(wire.AliveInterval)
				mu.Lock()
				_, err := conn.Write(wire.Alive(answered).Append(nil))
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
		qb := make([]byte, wire.RequestSize)
		for {
			if _, err := io.ReadFull(conn, qb); err != nil {
				return
			}
			q, _ := wire.DecodeRequest(qb)
			time.Sleep(delay)
			reply := wire.Response{Region: q.Region, First: q.First, Count: q.Count, Tag: q.Tag}.Append(nil)
			reply = append(reply, bytes.Repeat([]byte{wire.PageZero}, int(q.Count))...)
			mu.Lock()
			conn.Write(reply)
			answered++
			mu.Unlock()
		}
	})
	child := mapRAM(t, regionPages[0])
	c, err := memtap.Start(memtap.Config{Network: "tcp", Address: addr, Key: key,
		Regions: []memtap.Region{{Host: child}}, Timeout: timeout, Window: 1, MaxWindow: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	got := make(chan byte, 1)
	go func() { got <- child[5*pageSize] }()
	select {
	case b := <-got:
		if b != 0 {
			t.Errorf("page 5 is %#x, want zero", b)
		}
	case <-c.Done():
		c.Fence() // releases the toucher
		t.Fatalf("after %v: %v", time.Since(start), c.Err())
	}
	took := time.Since(start)
	if took < delay {
		t.Errorf("the page came after %v, before the server answered", took)
	}
	t.Logf("page after %v with a %v timeout", took, timeout)
}

// Between hosts (TCP) the page stream is encrypted: a proxy that records
// every byte between a clone and the server sees none of the pages it
// carries, and the clone still gets them all. The proxy is a process of
// its own: a goroutine of this one could not run while a fault on the
// child's RAM holds a thread in memmove, unpreemptible, and with it any
// garbage collection.
func TestPagesEncryptedOverTCP(t *testing.T) {
	p := newParent(t)
	rec := filepath.Join(t.TempDir(), "wire")
	proxy, addr := startChild(t, "proxy", p.tcp, rec)
	child := newChildRAM(t)
	cfg := p.config("tcp", child)
	cfg.Address = addr
	c, err := memtap.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	verify(t, child, false)
	c.Close()
	if err := proxy.Wait(); err != nil {
		t.Fatalf("proxy: %v", err)
	}
	seen, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) < p.counts.data*pageSize {
		t.Fatalf("the proxy saw %d bytes, fewer than the %d pages sent", len(seen), p.counts.data)
	}
	page := make([]byte, pageSize)
	for i := range regionPages[0] {
		if kind(i) != kindData {
			continue
		}
		pattern(page, 0, i)
		if bytes.Contains(seen, page[:64]) {
			t.Fatalf("page %d's content crossed the network in the clear", i)
		}
	}
}

// recordingProxy relays one connection to target, appending every byte
// either way to the file rec, and prints its address first.
func recordingProxy(target, rec string) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 2
	}
	fmt.Println(l.Addr())
	l.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
	c, err := l.Accept()
	if err != nil {
		return 2
	}
	s, err := net.Dial("tcp", target)
	if err != nil {
		return 2
	}
	f, err := os.Create(rec)
	if err != nil {
		return 2
	}
	defer f.Close()
	var mu sync.Mutex
	var done sync.WaitGroup
	relay := func(dst, src net.Conn) {
		defer done.Done()
		buf := make([]byte, 64<<10)
		for {
			src.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := src.Read(buf)
			if n > 0 {
				mu.Lock()
				f.Write(buf[:n])
				mu.Unlock()
				dst.Write(buf[:n])
			}
			if err != nil {
				dst.Close()
				src.Close()
				return
			}
		}
	}
	done.Add(2)
	go relay(s, c)
	go relay(c, s)
	done.Wait()
	return 0
}

// A multicast family on one host's loopback, in a network namespace of
// the test's own (the host's loopback has no multicast): eight clones in
// processes of their own fetch every page at once; each installs pages
// its siblings asked for, and all get the image right.
func TestMulticastFamily(t *testing.T) {
	if !inOwnNetns(t, "TestMulticastFamily") {
		return
	}
	p := newParentOf(t, &parent{group: server.NewGroup()}, func(int) bool { return true })
	siblings := 0
	for k, c := range family(t, p, 8) {
		if c.multicast == 0 {
			t.Errorf("clone %d installed no page from the group", k)
		}
		siblings += c.siblings
	}
	if siblings == 0 {
		t.Error("no clone installed a page a sibling asked for")
	}
}

// inOwnNetns runs test name again in a network namespace of its own, with
// lo up and multicast on, and reports false; in that run it reports true.
func inOwnNetns(t *testing.T, name string, ipCmds ...[]string) bool {
	t.Helper()
	if os.Getenv("MEMTAP_TEST_NETNS") == "" {
		cmd := exec.Command("unshare", "--net", os.Args[0], "-test.run", "^"+name+"$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "MEMTAP_TEST_NETNS=1")
		out, err := cmd.CombinedOutput()
		t.Logf("in a network namespace of its own:\n%s", out)
		if err != nil {
			t.Fatal(err)
		}
		return false
	}
	for _, args := range append([][]string{{"link", "set", "lo", "up"}, {"link", "set", "lo", "multicast", "on"}}, ipCmds...) {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	return true
}

// cloneStats are what a family's clone printed and its multicast counters.
type cloneStats struct {
	out                                string
	multicast, siblings, retried, left int
}

var stormRE = regexp.MustCompile(`multicast (\d+) from siblings (\d+) retried (\d+) forged \d+ replayed \d+ left (\d+)`)

// family runs n clones of p over TCP at once, each in a process of its
// own reading every page, and returns the statistics of those that got
// every page right; the test fails for the others.
func family(t *testing.T, p *parent, n int) []cloneStats {
	t.Helper()
	cc := childConfig{Network: "tcp", Address: p.tcp, Key: p.key, Pages: regionPages}
	for r := range regionPages {
		cc.Populated = append(cc.Populated, p.pop[r])
	}
	outs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for k := range n {
		wg.Go(func() { outs[k], errs[k], _ = runChild(t, "storm", cc, time.Minute) })
	}
	wg.Wait()
	var stats []cloneStats
	for k := range n {
		t.Logf("clone %d: %s", k, outs[k])
		m := stormRE.FindStringSubmatch(outs[k])
		switch {
		case errs[k] != nil:
			t.Errorf("clone %d: %v", k, errs[k])
		case m == nil:
			t.Errorf("clone %d printed no multicast statistics", k)
		default:
			c := cloneStats{out: outs[k]}
			for i, v := range []*int{&c.multicast, &c.siblings, &c.retried, &c.left} {
				*v, _ = strconv.Atoi(m[i+1])
			}
			stats = append(stats, c)
		}
	}
	st := p.srv.Stats()
	t.Logf("server: %d pages multicast, %d sent on streams", st.PagesMulticast, st.PagesSent)
	return stats
}

// A network that drops multicast, as many clouds do: the server sends the
// family's pages from an interface (a dummy one) that delivers nothing to
// the clones, who joined the group on another. Each clone notices that
// pages stop coming, leaves the group and gets every page by unicast. And
// a host that cannot send to the group at all (the interface is down)
// sends every page on the clones' streams.
func TestMulticastUnreachable(t *testing.T) {
	if !inOwnNetns(t, "TestMulticastUnreachable", []string{"link", "add", "mc0", "type", "veth", "peer", "name", "mc1"},
		[]string{"addr", "add", "10.77.0.1/24", "dev", "mc0"}, []string{"link", "set", "mc0", "up"}, []string{"link", "set", "mc1", "up"}) {
		return
	}
	for _, tc := range []struct {
		name  string
		after []string // an ip command run once the server is up
	}{
		{name: "dropped"},
		{name: "send fails", after: []string{"link", "set", "mc0", "down"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newParentOf(t, &parent{group: server.NewGroup(), from: net.IPv4(10, 77, 0, 1)}, func(int) bool { return true })
			if tc.after != nil {
				if out, err := exec.Command("ip", tc.after...).CombinedOutput(); err != nil {
					t.Fatalf("ip %v: %v: %s", tc.after, err, out)
				}
				defer exec.Command("ip", "link", "set", "mc0", "up").Run()
			}
			clones := family(t, p, 3)
			left := 0
			for k, c := range clones {
				if c.multicast != 0 {
					t.Errorf("clone %d installed %d pages from a group that delivers nothing", k, c.multicast)
				}
				if c.left == 1 {
					left++
					if !strings.Contains(c.out, "leaving it, every page by unicast") {
						t.Errorf("clone %d left the group without saying so", k)
					}
				} else if c.retried != 0 {
					// The server sends to the group only while two
					// clients or more are connected: a clone that ran
					// alone got every page on its stream and has
					// nothing to leave for.
					t.Errorf("clone %d asked again for %d pages that did not come and stayed in the group", k, c.retried)
				}
			}
			st := p.srv.Stats()
			switch {
			case tc.after == nil && (left == 0 || st.PagesMulticast == 0):
				t.Errorf("%d of 3 clones left the group, %d pages multicast: want those whose pages went to a group that delivers nothing to leave it", left, st.PagesMulticast)
			case tc.after != nil && (left != 0 || st.PagesMulticast != 0):
				t.Errorf("%d clones left the group, %d pages multicast: want none multicast once sending fails", left, st.PagesMulticast)
			}
		})
	}
}
