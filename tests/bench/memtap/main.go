// Command memtap benchmarks memtap and the parent's memory server on the
// host, without KVM, and prints a Markdown table:
//
//	go run ./tests/bench/memtap          (or: go build -o build/bench/memtap ./tests/bench/memtap && build/bench/memtap)
//
// It needs userfaultfd (root, or vm.unprivileged_userfaultfd=1) and about
// 2.5 GiB of free memory, and runs in well under a minute. Plain memory
// mappings stand for guest RAM; a goroutine reading them stands for the
// guest. Each figure has its floor measured in the same run:
//
//   - Single-page fault service: a child touches pages of a frozen parent
//     image in random order with prefetch off (Window 1), so that each
//     touch is one fault served through memtap's helper and the memory
//     server (over loopback TCP, under TLS as between hosts, and over a
//     Unix socket). The floor is the path's round trip (a request and a
//     one-page reply between two goroutines, on the same transport; in a
//     second table between this process and one of its own, -echo) plus
//     an in-process userfaultfd handler (one LockOSThread'd goroutine,
//     safe here because only one goroutine faults) that copies every page
//     from a local buffer. Per-touch times, as the toucher sees them;
//     target: memtap at most 2x the floor, median and p99.
//   - Sequential scan: a child reads one byte of each page of a -scan MiB
//     region, with memtap's default prefetch, against the same floor
//     handler, which faults on every page. Target: at most 0.5x the floor
//     per page. Pages fetched versus touched come from memtap's Stats.
//   - Freeze: the parent's pause for freezing -small and -large MiB of
//     populated RAM, with transparent huge pages (as sfvmm maps guest
//     RAM) and with 4 KiB pages: Seal, after Arm has
//     write-protected the RAM while the parent ran on (and wrote 16
//     pages). Arm's time is shown beside it. Median of -reps; target:
//     the pause at most 2x apart.
//
// Between two hosts: with -listen-netns NAME -listen-ip IP, the memory
// server and the round trip's server listen in network namespace NAME at
// IP, and everything else runs where the command was started, e.g. in
// another of kvmbox's hosts (ip netns exec host1 build/bench/memtap
// -listen-netns host0 -listen-ip 10.77.0.1): only the TCP rows are
// measured then, over the path between the two.
package main

import (
	"bufio"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/sfvmm/sfvmm/memtap"
	"github.com/sfvmm/sfvmm/memtap/server"
	"github.com/sfvmm/sfvmm/memtap/uffd"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"golang.org/x/sys/unix"
)

const page = 4096

type config struct {
	listenNetns, listenIP string // where servers listen (see the package comment)
	faults, rounds        int    // single-page touches per round, rounds
	scanMiB, scanRounds   int
	small, large          int // MiB, freeze
	reps                  int
}

func main() {
	memtap.Main()
	var c config
	flag.IntVar(&c.faults, "faults", 2000, "single-page faults per round")
	flag.IntVar(&c.rounds, "rounds", 5, "rounds of single-page faults")
	flag.IntVar(&c.scanMiB, "scan", 256, "sequential scan size, MiB")
	flag.IntVar(&c.scanRounds, "scan-rounds", 2, "rounds of the sequential scan")
	flag.IntVar(&c.small, "small", 64, "small freeze size, MiB")
	flag.IntVar(&c.large, "large", 1024, "large freeze size, MiB")
	flag.IntVar(&c.reps, "reps", 5, "freeze repetitions (median)")
	flag.StringVar(&c.listenNetns, "listen-netns", "", "network namespace in which the servers listen (another host); \"\": this one")
	flag.StringVar(&c.listenIP, "listen-ip", "127.0.0.1", "IP at which the servers listen")
	echo := flag.String("echo", "", "serve one round-trip connection over this network (tcp, unix) and exit: the far end the bench starts for its two-process floor")
	flag.Parse()
	if *echo != "" {
		if err := echoMain(c, *echo); err != nil {
			fmt.Fprintf(os.Stderr, "bench memtap -echo: %v\n", err)
			os.Exit(1)
		}
		return
	}
	// The floor's in-process handler needs a P while the toucher holds
	// one, blocked in a fault.
	if runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintf(os.Stderr, "bench memtap: %v\n", err)
		os.Exit(1)
	}
}

func run(c config) error {
	start := time.Now()

	// The parent: an image of single-fault pages plus the scan region.
	faultPages := c.faults
	scanPages := c.scanMiB << 20 / page
	small, err := mapRAM(faultPages, false)
	if err != nil {
		return err
	}
	big, err := mapRAM(scanPages, true)
	if err != nil {
		return err
	}
	for _, r := range [][]byte{small, big} {
		for i := 0; i < len(r); i += page {
			// Non-zero pages with distinct contents: nothing is skipped
			// as zero.
			*(*uint64)(unsafe.Pointer(&r[i])) = uint64(i) | 1<<63
		}
	}
	srv, err := server.New(server.Config{})
	if err != nil {
		return err
	}
	defer srv.Close()
	im, err := srv.Freeze([]server.Region{{Host: small, Populated: all(faultPages)}, {Host: big, Populated: all(scanPages)}})
	if err != nil {
		return err
	}
	key, err := wire.NewKey()
	if err != nil {
		return err
	}
	tl, err := c.listen()
	if err != nil {
		return err
	}
	tcpAddr := tl.Addr().String()
	if err := im.Serve(tl, key); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "memtap-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "mem.sock")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	if err := im.Serve(ul, key); err != nil {
		return err
	}
	// Direct: the child reads pages the parent has not written since the
	// fork from the parent's memory (memtap.ParentMemory), as sfvmm's
	// clones on their parent's host do; the parent here writes none.
	parent := []uint64{uint64(uintptr(unsafe.Pointer(&small[0]))), uint64(uintptr(unsafe.Pointer(&big[0])))}
	transports := []transport{{"TCP", "tcp", tcpAddr, nil}, {"Unix", "unix", sock, nil},
		{"Unix + direct reads (same host, sfvmm's clones)", "unix", sock, parent}}
	if c.listenNetns != "" {
		transports = []transport{{fmt.Sprintf("TCP, to %s in %s", tcpAddr, c.listenNetns), "tcp", tcpAddr, nil}}
	}

	// (a) Single-page fault service: rounds alternate floor and memtap,
	// so that both see the same load on the machine.
	var floor []time.Duration
	mt := make([][]time.Duration, len(transports))
	st := make([]memtap.Stats, len(transports))
	for range c.rounds {
		f, err := floorTouches(faultPages, true)
		if err != nil {
			return err
		}
		floor = append(floor, f...)
		for k, tr := range transports {
			ts, s, err := memtapTouches(tr, key, faultPages, scanPages, true, 1)
			if err != nil {
				return err
			}
			mt[k] = append(mt[k], ts...)
			st[k].Add(s)
		}
	}
	slices.Sort(floor)
	// The path's own cost: a request and a one-page reply over the same
	// transport (TLS over TCP, as between hosts; Unix in the clear).
	trips, procTrips := map[string][]time.Duration{}, map[string][]time.Duration{}
	for _, network := range []string{"tcp", "unix"} {
		if trips[network], err = roundTrips(c, network, c.faults*c.rounds, false); err != nil {
			return err
		}
		if procTrips[network], err = roundTrips(c, network, c.faults*c.rounds, true); err != nil {
			return err
		}
	}
	fmt.Printf("memtap on the host (no KVM): %d CPUs, GOMAXPROCS %d, %s; load average %s\n\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), kernel(), loadavg())
	fmt.Printf("Single-page fault service, %d random touches each, prefetch off. Floor: the path's round trip (a request and a one-page reply between two goroutines, crypto/tls over loopback TCP or a Unix socket in the clear; none for direct reads) plus an in-process userfaultfd handler copying from a local buffer\n\n", len(floor))
	fmt.Println("| transport | memtap median | round trip median | uffd handler median | floor median | memtap / floor | target | memtap p99 | floor p99 | ratio | pages fetched / faults |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for k, tr := range transports {
		slices.Sort(mt[k])
		rt := trips[tr.network]
		if tr.parent != nil {
			rt = []time.Duration{0}
		}
		m, p, rm, fm := pct(mt[k], 50), pct(mt[k], 99), pct(rt, 50), pct(floor, 50)
		fp := pct(rt, 99) + pct(floor, 99)
		fmt.Printf("| %s | %s | %s | %s | %s | %s | ≤ 2× | %s | %s | %s | %d / %d |\n", tr.name, us(m), us(rm), us(fm), us(rm+fm), ratio(m, rm+fm),
			us(p), us(fp), ratio(p, fp), st[k].PagesFetched, st[k].Faults)
	}

	fmt.Printf("\nThe same, against a floor whose round trip runs between two processes (the far end a process of its own, in %s), as a fault's path between hosts must: its client and its memory server are different processes. Where hosts share a CPU (the sandbox's) each message between them then switches address space, which the two goroutines above never pay. The handler stays in-process: memtap's own helper process is the design's cost.\n\n", where(c))
	fmt.Println("| transport | memtap median | round trip median, two processes | floor median | memtap / floor | target | memtap p99 | floor p99 | ratio |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for k, tr := range transports {
		if tr.parent != nil {
			continue
		}
		rt := procTrips[tr.network]
		m, p, rm, fm := pct(mt[k], 50), pct(mt[k], 99), pct(rt, 50), pct(floor, 50)
		fp := pct(rt, 99) + pct(floor, 99)
		fmt.Printf("| %s | %s | %s | %s | %s | ≤ 2× | %s | %s | %s |\n", tr.name, us(m), us(rm), us(rm+fm), ratio(m, rm+fm), us(p), us(fp), ratio(p, fp))
	}

	// (b) Sequential scan.
	var floorScan time.Duration
	scan := make([]time.Duration, len(transports))
	for k := range st {
		st[k] = memtap.Stats{}
	}
	for range c.scanRounds {
		f, err := floorTouches(scanPages, false)
		if err != nil {
			return err
		}
		floorScan += f[0]
		for k, tr := range transports {
			ts, s, err := memtapTouches(tr, key, faultPages, scanPages, false, 0)
			if err != nil {
				return err
			}
			scan[k] += ts[0]
			st[k].Add(s)
		}
	}
	touched := scanPages * c.scanRounds
	floorPer := floorScan / time.Duration(touched)
	fmt.Printf("\n%d MiB sequential scan (one byte per page), %d rounds, memtap's default prefetch; floor: the same handler, a fault per page\n\n", c.scanMiB, c.scanRounds)
	fmt.Println("| transport | memtap per page | floor per page | ratio | target | pages fetched / touched | faults | requests |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- |")
	for k, tr := range transports {
		per := scan[k] / time.Duration(touched)
		fmt.Printf("| %s | %s | %s | %s | ≤ 0.5× | %d / %d | %d | %d |\n", tr.name, ns(per), ns(floorPer), ratio(per, floorPer),
			st[k].PagesFetched, touched, st[k].Faults, st[k].Requests)
	}

	// (c) Freeze.
	srv.Close()
	fmt.Printf("\nParent freeze: the pause (Seal), median of %d, after Arm write-protected the RAM while the parent ran\n\n", c.reps)
	fmt.Printf("| guest RAM pages | pause, %d MiB | pause, %d MiB | ratio | target | Arm (parent running), %d / %d MiB |\n", c.small, c.large, c.small, c.large)
	fmt.Println("| --- | --- | --- | --- | --- | --- |")
	for _, thp := range []bool{true, false} {
		a, wa, err := freezeTime(c.small, thp, c.reps)
		if err != nil {
			return err
		}
		b, wb, err := freezeTime(c.large, thp, c.reps)
		if err != nil {
			return err
		}
		kind := "2 MiB (THP, as sfvmm maps guest RAM)"
		if !thp {
			kind = "4 KiB"
		}
		fmt.Printf("| %s | %s | %s | %s | ≤ 2× | %s / %s |\n", kind, us(a), us(b), ratio(b, a), us(wa), us(wb))
	}
	fmt.Printf("\n(run took %v)\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// allPages is a PageSet of every page.
type allPages uint64

func all(n int) allPages                         { return allPages(n) }
func (a allPages) Len() uint64                   { return uint64(a) }
func (a allPages) Runs(fn func(start, n uint64)) { fn(0, uint64(a)) }
func us(d time.Duration) string                  { return fmt.Sprintf("%.1f µs", float64(d)/1e3) }
func ns(d time.Duration) string                  { return fmt.Sprintf("%d ns", d.Nanoseconds()) }
func ratio(a, b time.Duration) string            { return fmt.Sprintf("%.2f×", float64(a)/float64(b)) }
func pct(ts []time.Duration, p float64) time.Duration {
	return ts[min(len(ts)-1, int(float64(len(ts))*p/100))]
}

func sum(ts []time.Duration) time.Duration {
	var s time.Duration
	for _, t := range ts {
		s += t
	}
	return s
}

// where says where the servers listen.
func where(c config) string {
	if c.listenNetns == "" {
		return "this network namespace"
	}
	return "network namespace " + c.listenNetns
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil || len(b) < 14 {
		return "?"
	}
	return string(b[:14])
}

func kernel() string {
	var u unix.Utsname
	unix.Uname(&u)
	return "Linux " + unix.ByteSliceToString(u.Release[:])
}

func mapRAM(pages int, thp bool) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, pages*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("map %d pages: %w", pages, err)
	}
	advice := unix.MADV_NOHUGEPAGE
	if thp {
		advice = unix.MADV_HUGEPAGE
	}
	unix.Madvise(b, advice)
	return b, nil
}

// sink keeps the compiler from dropping the loads of touch.
var sink byte

// touch reads one byte of each page of ram in order, timing each touch
// (perTouch) or the whole pass (a single figure).
func touch(ram []byte, order []int, perTouch bool) []time.Duration {
	var s byte
	defer func() { sink += s }()
	if !perTouch {
		t0 := time.Now()
		for _, i := range order {
			s += ram[i*page]
		}
		return []time.Duration{time.Since(t0)}
	}
	ts := make([]time.Duration, 0, len(order))
	for _, i := range order {
		t0 := time.Now()
		s += ram[i*page]
		ts = append(ts, time.Since(t0))
	}
	slices.Sort(ts)
	return ts
}

func order(pages int, random bool) []int {
	o := make([]int, pages)
	for i := range o {
		o[i] = i
	}
	if random {
		r := rand.New(rand.NewPCG(1, 2))
		r.Shuffle(len(o), func(i, j int) { o[i], o[j] = o[j], o[i] })
	}
	return o
}

// floorTouches serves faults on a fresh region from a local buffer with an
// in-process handler and times the touches.
func floorTouches(pages int, random bool) ([]time.Duration, error) {
	ram, err := mapRAM(pages, false)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(ram)
	u, err := uffd.New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		return nil, err
	}
	defer u.Close()
	if _, err := u.API(0); err != nil {
		return nil, err
	}
	base := uintptr(unsafe.Pointer(&ram[0]))
	if _, err := u.Register(base, uintptr(len(ram)), uffd.ModeMissing); err != nil {
		return nil, err
	}
	src := make([]byte, page)
	for i := range src {
		src[i] = byte(i) | 1
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		msgs := make([]uffd.Msg, 16)
		pfd := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}}
		for {
			n, err := u.Read(msgs)
			if err != nil {
				select {
				case <-stop:
					return
				default:
				}
				unix.Poll(pfd, 10)
				continue
			}
			for _, m := range msgs[:n] {
				u.Copy(uintptr(m.Address)&^(page-1), uintptr(unsafe.Pointer(&src[0])), page, 0)
			}
		}
	}()
	ts := touch(ram, order(pages, random), random)
	close(stop)
	<-done
	return ts, nil
}

// roundTrips times n round trips of a request and a one-page reply (the
// sizes of memtap's) over network: "tcp" under TLS 1.3 to the listen
// address, or "unix". The far end is a goroutine of this process, or,
// with proc, a process of its own, as a memory server is: between
// sandbox hosts, which share one CPU, each message from one process to
// another switches address space, which two goroutines of one process
// never pay.
func roundTrips(cfg config, network string, n int, proc bool) (ts []time.Duration, err error) {
	var addr string
	if proc {
		cmd, out, serr := startEcho(cfg, network)
		if serr != nil {
			return nil, serr
		}
		// It ends by itself, and cleans up, once the connection closes
		// (deferred below, so done before this); after a failure (err,
		// the result) it may never have been connected to.
		defer func() {
			if err != nil {
				cmd.Process.Kill()
			}
			cmd.Wait()
		}()
		line, rerr := bufio.NewReader(out).ReadString('\n')
		if rerr != nil {
			return nil, fmt.Errorf("echo process: no address: %w", rerr)
		}
		addr = strings.TrimSpace(line)
	} else {
		l, cleanup, err := listenEcho(cfg, network)
		if err != nil {
			return nil, err
		}
		defer cleanup()
		go serveEcho(l, network)
		addr = l.Addr().String()
	}
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	if network == "tcp" {
		c = tls.Client(c, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
	}
	defer c.Close()
	req, reply := make([]byte, wire.RequestSize), make([]byte, wire.ResponseSize+1+page)
	ts = make([]time.Duration, 0, n)
	for i := range n + n/10 {
		start := time.Now()
		if _, err := c.Write(req); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			return nil, err
		}
		if i >= n/10 { // the first tenth warms up
			ts = append(ts, time.Since(start))
		}
	}
	slices.Sort(ts)
	return ts, nil
}

// startEcho starts this program as the round trip's far end (-echo) and
// returns its standard output, where it prints its address.
func startEcho(cfg config, network string) (*exec.Cmd, io.Reader, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(self, "-echo", network, "-listen-netns", cfg.listenNetns, "-listen-ip", cfg.listenIP)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	return cmd, out, cmd.Start()
}

// listenEcho opens the round trip's listener: TCP at the listen address,
// or a Unix socket in a new directory, which cleanup removes.
func listenEcho(cfg config, network string) (l net.Listener, cleanup func(), err error) {
	if network != "unix" {
		l, err = cfg.listen()
		return l, func() { l.Close() }, err
	}
	dir, err := os.MkdirTemp("", "memtap-bench-rtt")
	if err != nil {
		return nil, nil, err
	}
	if l, err = net.Listen(network, filepath.Join(dir, "rtt.sock")); err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return l, func() { l.Close(); os.RemoveAll(dir) }, nil
}

// serveEcho answers one connection's requests, each with a one-page
// reply, until it closes; over TCP under TLS 1.3 with a certificate of
// its own.
func serveEcho(l net.Listener, network string) error {
	c, err := l.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	if network == "tcp" {
		_, priv, err := ed25519.GenerateKey(nil)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(nil, tmpl, tmpl, priv.Public(), priv)
		if err != nil {
			return err
		}
		c = tls.Server(c, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}}})
	}
	req, reply := make([]byte, wire.RequestSize), make([]byte, wire.ResponseSize+1+page)
	for {
		if _, err := io.ReadFull(c, req); err != nil {
			return nil
		}
		if _, err := c.Write(reply); err != nil {
			return err
		}
	}
}

// echoMain is the round trip's far end as a process of its own (-echo):
// it prints its address, serves one connection and exits.
func echoMain(cfg config, network string) error {
	l, cleanup, err := listenEcho(cfg, network)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Println(l.Addr().String())
	return serveEcho(l, network)
}

// listen opens a TCP listener at c.listenIP, any port, in network
// namespace c.listenNetns when that is set. A socket stays in the
// namespace it was made in; the thread that switched to make it ends with
// its goroutine rather than go back to the scheduler in that namespace.
func (c config) listen() (net.Listener, error) {
	addr := net.JoinHostPort(c.listenIP, "0")
	if c.listenNetns == "" {
		return net.Listen("tcp", addr)
	}
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+c.listenNetns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{err: fmt.Errorf("open netns %s: %w", c.listenNetns, err)}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns %s: %w", c.listenNetns, err)}
			return
		}
		l, err := net.Listen("tcp", addr)
		ch <- result{l, err}
	}()
	r := <-ch
	return r.l, r.err
}

// memtapTouches starts memtap for a child of the benchmark image and times
// touches of one of its regions (0: single-fault pages, 1: scan region).
// window 1 turns prefetch off; 0 keeps memtap's defaults.
// transport is how a benchmark child reaches the parent's memory.
type transport struct {
	name, network, addr string
	parent              []uint64 // region bases in this process, for direct reads; nil: none
}

func memtapTouches(tr transport, key wire.Key, faultPages, scanPages int, single bool, window int) ([]time.Duration, memtap.Stats, error) {
	r0, err := mapRAM(faultPages, false)
	if err != nil {
		return nil, memtap.Stats{}, err
	}
	defer unix.Munmap(r0)
	r1, err := mapRAM(scanPages, false)
	if err != nil {
		return nil, memtap.Stats{}, err
	}
	defer unix.Munmap(r1)
	cfg := memtap.Config{Network: tr.network, Address: tr.addr, Key: key, Window: window, MaxWindow: window,
		Regions: []memtap.Region{{Host: r0, Populated: all(faultPages)}, {Host: r1, Populated: all(scanPages)}}}
	if tr.parent != nil {
		pm, err := memtap.OpenParent(os.Getpid(), tr.parent)
		if err != nil {
			return nil, memtap.Stats{}, err
		}
		defer pm.Close()
		cfg.Parent = pm
	}
	c, err := memtap.Start(cfg)
	if err != nil {
		return nil, memtap.Stats{}, err
	}
	defer c.Close()
	var ts []time.Duration
	if single {
		ts = touch(r0, order(faultPages, true), true)
	} else {
		ts = touch(r1, order(scanPages, false), false)
	}
	// Check what came: the image's first word of the last page touched.
	last := r1[len(r1)-page:]
	if single {
		last = r0[len(r0)-page:]
	}
	if *(*uint64)(unsafe.Pointer(&last[0]))>>63 != 1 {
		return nil, memtap.Stats{}, fmt.Errorf("%s: child page does not hold the parent's data", tr.name)
	}
	if err := c.Err(); err != nil {
		return nil, memtap.Stats{}, err
	}
	return ts, c.Stats(), nil
}

// freezeTime is the median pause (Seal) of a freeze of mib MiB of
// populated RAM, and the median time of its Arm.
func freezeTime(mib int, thp bool, reps int) (time.Duration, time.Duration, error) {
	pages := mib << 20 / page
	ram, err := mapRAM(pages, thp)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Munmap(ram)
	for i := 0; i < len(ram); i += page {
		ram[i] = 1
	}
	srv, err := server.New(server.Config{})
	if err != nil {
		return 0, 0, err
	}
	defer srv.Close()
	regions := []server.Region{{Host: ram, Populated: all(pages)}}
	var ts, arms []time.Duration
	for range reps {
		t0 := time.Now()
		im, err := srv.Arm(regions)
		if err != nil {
			return 0, 0, err
		}
		arms = append(arms, time.Since(t0))
		// The parent runs on and writes a little before the pause, and
		// again after it, as it would.
		for i := 0; i < len(ram); i += len(ram) / 16 {
			ram[i]++
		}
		t1 := time.Now()
		err = im.Seal(regions)
		ts = append(ts, time.Since(t1))
		if err != nil {
			return 0, 0, err
		}
		for i := 0; i < len(ram); i += len(ram) / 16 {
			ram[i]++
		}
		if err := im.Close(); err != nil {
			return 0, 0, err
		}
	}
	slices.Sort(ts)
	slices.Sort(arms)
	return ts[len(ts)/2], arms[len(arms)/2], nil
}
