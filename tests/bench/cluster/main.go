// Command cluster benchmarks fork across hosts and prints Markdown tables.
// It needs four sandbox hosts, e.g.
//
//	make bench-cluster   (= tests/kvmbox/kvmbox.sh --hosts 4 -- build/bench/cluster)
//
// host0 runs the parent (the forktest kernel, which fills -size bytes,
// forks N clones that each read all of it while the parent overwrites it,
// and joins them) and an agent with no slots, so that every clone runs on
// host1..host3 and every page crosses the network; host0's agent also
// holds the embedded etcd. For N = -clones, it measures:
//
//   - the bytes host0 sent (its interface's tx_bytes, from just before the
//     parent starts to its exit: pages, the launches' streams and etcd's
//     traffic alike), with --pages unicast and with --pages multicast;
//   - the time from the ticket (just before sf_clone) to the parent's
//     join of all N clones, across hosts in each mode, on one host (the
//     clones local, reading the parent's memory directly where they can),
//     and the time to cold-boot N VMs of the same kernel until each has
//     filled the same bytes itself;
//   - per clone: pages it fetched itself against pages it installed from
//     the group (those its siblings asked for, in brackets), pages asked
//     again, its median fault service time, and when the clones started;
//   - on the clones' hosts, the kernel's count of datagrams delivered,
//     dropped for a full socket buffer, and of failed IP reassemblies.
//
// One run per cell: the bytes are what the targets are about, and the
// nested sandbox's times are slow and noisy; read them as ratios.
package main

import (
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sfvmm/sfvmm/tests/bench/internal/benchproc"
)

const agentPort = "7070"

type bench struct {
	sfvmm, forktest string
	names, addrs    []string
	tls             string
	size            string
	memory          string
	timeout         time.Duration
}

// result is one fork across hosts.
type result struct {
	took   time.Duration
	sent   uint64 // host0's tx_bytes
	clones []clone
	// firstUp and lastUp: when the first and the last clone's VMM said
	// it was running, after the ticket.
	firstUp, lastUp time.Duration
	// The clones' hosts' kernel counters (summed, the run's change).
	kernel map[string]uint64
}

// kernelCounters are the counters of /proc/net/snmp that say where
// datagrams went on the clones' hosts.
var kernelCounters = []string{"Udp:InDatagrams", "Udp:RcvbufErrors", "Udp:InErrors", "Ip:ReasmFails", "Ip:ReasmTimeout"}

type clone struct {
	fetched, installed, siblings, retried int
	p50                                   time.Duration
}

func main() {
	root := flag.String("root", ".", "repository root")
	b := &bench{}
	flag.StringVar(&b.sfvmm, "sfvmm", "sfvmm", "sfvmm binary")
	counts := flag.String("clones", "1,2,4,8,16", "clone counts, comma-separated")
	flag.StringVar(&b.size, "size", "64M", "bytes the parent fills and every clone reads (forktest's size=)")
	modes := flag.String("modes", "unicast,multicast", "--pages modes to compare")
	flag.DurationVar(&b.timeout, "timeout", 20*time.Minute, "bound on one fork or boot")
	flag.Parse()
	b.forktest = filepath.Join(*root, "build", "kernels", "forktest.elf")
	b.names, b.addrs = strings.Fields(os.Getenv("SFVMM_HOSTS")), strings.Fields(os.Getenv("SFVMM_HOST_ADDRS"))
	if len(b.names) < 4 || len(b.addrs) != len(b.names) {
		fail(fmt.Errorf("need 4 sandbox hosts (tests/kvmbox/kvmbox.sh --hosts 4); SFVMM_HOSTS=%q", os.Getenv("SFVMM_HOSTS")))
	}
	size, err := parseSize(b.size)
	if err != nil {
		fail(err)
	}
	b.memory = fmt.Sprintf("%dM", size>>20+64)
	var ns []int
	for _, f := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 16 {
			fail(fmt.Errorf("-clones: %q is not a count from 1 to 16", f))
		}
		ns = append(ns, n)
	}
	ms := strings.Split(*modes, ",")
	for _, m := range ms {
		if m != "unicast" && m != "multicast" {
			fail(fmt.Errorf("-modes: %q is not unicast or multicast", m))
		}
	}
	defer benchproc.KillAll()
	start := time.Now()
	if err := b.startCluster(slices.Max(ns)); err != nil {
		fail(err)
	}
	across := map[string]map[int]result{}
	local, boot := map[int]time.Duration{}, map[int]time.Duration{}
	for _, n := range ns {
		for _, m := range ms {
			r, err := b.forkAcross(n, m)
			if err != nil {
				fail(err)
			}
			if across[m] == nil {
				across[m] = map[int]result{}
			}
			across[m][n] = r
			fmt.Fprintf(os.Stderr, "bench: N=%d %s: %v, %d bytes sent\n", n, m, r.took.Round(time.Millisecond), r.sent)
		}
		if local[n], err = b.forkLocal(n); err != nil {
			fail(err)
		}
		if boot[n], err = b.coldBoot(n); err != nil {
			fail(err)
		}
	}
	fmt.Printf("sfvmm fork across hosts: forktest, %s read by every clone, clones on 3 hosts, the parent on a 4th\n\n", b.size)
	fmt.Println("Bytes the parent's host sent (tx_bytes of its interface)")
	fmt.Println()
	fmt.Print("| N |")
	for _, m := range ms {
		fmt.Printf(" %s | / %s for N=%d |", m, m, ns[0])
	}
	fmt.Println(" multicast / unicast |")
	fmt.Println("|" + strings.Repeat(" --- |", 2+2*len(ms)))
	for _, n := range ns {
		fmt.Printf("| %d |", n)
		for _, m := range ms {
			fmt.Printf(" %s | %.2f |", mib(across[m][n].sent), float64(across[m][n].sent)/float64(across[m][ns[0]].sent))
		}
		if len(ms) == 2 {
			fmt.Printf(" %.2f |\n", float64(across["multicast"][n].sent)/float64(across["unicast"][n].sent))
		} else {
			fmt.Println(" — |")
		}
	}
	fmt.Println()
	fmt.Println("Time from the ticket (just before sf_clone) to the parent's join of all N, against the same fork on one host and cold-booting N VMs that fill the bytes themselves")
	fmt.Println()
	fmt.Print("| N |")
	for _, m := range ms {
		fmt.Printf(" across hosts, %s |", m)
	}
	fmt.Print(" one host | cold boot of N |")
	for _, m := range ms {
		fmt.Printf(" %s / one host | %s / boot |", m, m)
	}
	fmt.Println()
	fmt.Println("|" + strings.Repeat(" --- |", 3+3*len(ms)))
	for _, n := range ns {
		fmt.Printf("| %d |", n)
		for _, m := range ms {
			fmt.Printf(" %v |", secs(across[m][n].took))
		}
		fmt.Printf(" %v | %v |", secs(local[n]), secs(boot[n]))
		for _, m := range ms {
			fmt.Printf(" %.2f | %.2f |", float64(across[m][n].took)/float64(local[n]), float64(across[m][n].took)/float64(boot[n]))
		}
		fmt.Println()
	}
	fmt.Println()
	fmt.Println("Per clone (mean over the N clones): pages it fetched itself, pages it installed from the group (of those, asked for by a sibling), pages asked again, and the median of its faults' service times")
	fmt.Println()
	fmt.Println("| N | mode | fetched itself | installed from the group | (asked by siblings) | asked again | fault p50 | clones running (after the ticket), first – last |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, n := range ns {
		for _, m := range ms {
			var s clone
			var p50s []time.Duration
			cs := across[m][n].clones
			for _, c := range cs {
				s.fetched += c.fetched
				s.installed += c.installed
				s.siblings += c.siblings
				s.retried += c.retried
				p50s = append(p50s, c.p50)
			}
			k := float64(len(cs))
			slices.Sort(p50s)
			fmt.Printf("| %d | %s | %.0f | %.0f | %.0f | %.0f | %v | %s – %s |\n", n, m, float64(s.fetched)/k, float64(s.installed)/k,
				float64(s.siblings)/k, float64(s.retried)/k, p50s[len(p50s)/2], secs(across[m][n].firstUp), secs(across[m][n].lastUp))
		}
	}
	fmt.Println()
	fmt.Println("On the clones' hosts, summed (/proc/net/snmp, the run's change): datagrams delivered to sockets (each clone's socket counts its own), dropped because a socket's buffer was full, other receive errors, and IP reassembly failures and timeouts (a datagram is three fragments)")
	fmt.Println()
	fmt.Print("| N | mode |")
	for _, k := range kernelCounters {
		fmt.Printf(" %s |", k)
	}
	fmt.Println()
	fmt.Println("|" + strings.Repeat(" --- |", 2+len(kernelCounters)))
	for _, n := range ns {
		for _, m := range ms {
			fmt.Printf("| %d | %s |", n, m)
			for _, k := range kernelCounters {
				fmt.Printf(" %d |", across[m][n].kernel[k])
			}
			fmt.Println()
		}
	}
	fmt.Println()
	fmt.Printf("(run took %v)\n", time.Since(start).Round(time.Second))
}

func fail(err error) {
	benchproc.KillAll()
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func parseSize(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSuffix(s, "M"))
	if err != nil || !strings.HasSuffix(s, "M") || n < 1 || n > 1024 {
		return 0, fmt.Errorf("-size %q: want 1M to 1024M", s)
	}
	return n << 20, nil
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// startCluster makes the cluster's certificates and starts an agent on each
// host: host0's with the embedded etcd and no slots, the others' with
// enough slots for n clones between them.
func (b *bench) startCluster(n int) error {
	var err error
	if b.tls, err = os.MkdirTemp("", "sfvmm-bench-cluster-"); err != nil {
		return err
	}
	if out, err := exec.Command(b.sfvmm, "ca", "init", "--dir", b.tls).CombinedOutput(); err != nil {
		return fmt.Errorf("sfvmm ca init: %v: %s", err, out)
	}
	for i, name := range b.names[:4] {
		if out, err := exec.Command(b.sfvmm, "ca", "issue", "--dir", b.tls, "--name", name, "--ip", b.addrs[i]).CombinedOutput(); err != nil {
			return fmt.Errorf("sfvmm ca issue: %v: %s", err, out)
		}
	}
	slots := fmt.Sprint(int(math.Ceil(float64(n) / 3)))
	for i, name := range b.names[:4] {
		args := []string{"netns", "exec", name, b.sfvmm, "agent", "--name", name, "--cluster-tls", b.tls, "--listen", b.agentAddr(i)}
		if i == 0 {
			args = append(args, "--slots", "0", "--etcd-embedded", filepath.Join(b.tls, "etcd"))
		} else {
			args = append(args, "--slots", slots, "--etcd", "https://"+net.JoinHostPort(b.addrs[0], "2379"))
		}
		p, err := benchproc.Start("ip", args...)
		if err != nil {
			return err
		}
		if _, _, _, err := p.WaitLine(0, regexp.MustCompile(`^agent `+name+` serving`), false, 2*time.Minute, "agent "+name); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) agentAddr(i int) string { return net.JoinHostPort(b.addrs[i], agentPort) }

func (b *bench) txBytes() (uint64, error) {
	out, err := exec.Command("ip", "netns", "exec", b.names[0], "cat", "/sys/class/net/eth0/statistics/tx_bytes").Output()
	if err != nil {
		return 0, fmt.Errorf("host0's tx_bytes: %v", err)
	}
	return strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
}

var (
	ticketRE  = regexp.MustCompile(`^forktest: ticket \d+ for`)
	runningRE = regexp.MustCompile(`^sfvmm clone \d+: running `)
	// A clone's own report of a crash, or the parent's of a clone lost.
	crashRE = regexp.MustCompile(`^sfvmm clone \d+: (error: |guest ended: (triple fault|reset|error))|^sfvmm: (warning|error): ticket \d+: (start )?clone \d+: `)
	statsRE = regexp.MustCompile(`^sfvmm clone \d+: memtap: \d+ faults, (\d+) pages fetched, .* fault p50 (\S+) p99 [^,\s]+(, multicast: (\d+) pages installed \((\d+) asked by siblings\), (\d+) asked again)?`)
)

func joinedRE(n int) *regexp.Regexp {
	return regexp.MustCompile(fmt.Sprintf(`^forktest: parent joined: all %d clones exited, 0 without`, n))
}

// forkRun runs the forktest parent with args before its own and times the
// ticket to the join of n clones.
func (b *bench) forkRun(n int, args ...string) (*benchproc.Proc, time.Time, time.Duration, error) {
	args = append(args, "--kernel", b.forktest, "--memory", b.memory, "--fork-capacity", fmt.Sprint(n),
		"--cmdline", fmt.Sprintf("mode=fork clones=%d size=%s", n, b.size))
	p, err := benchproc.Start(args[0], args[1:]...)
	if err != nil {
		return nil, time.Time{}, 0, err
	}
	what := fmt.Sprintf("fork of %d", n)
	t, i, _, err := p.WaitLineUnless(0, ticketRE, false, crashRE, b.timeout, what)
	if err != nil {
		p.Kill()
		return nil, time.Time{}, 0, err
	}
	j, _, _, err := p.WaitLineUnless(i, joinedRE(n), false, crashRE, b.timeout, what)
	if err != nil {
		p.Kill()
		return nil, time.Time{}, 0, err
	}
	if exited, _ := p.ExitedWithin(time.Minute); !exited {
		p.Kill()
		return nil, time.Time{}, 0, fmt.Errorf("%s: the parent did not exit after its join", what)
	}
	return p, t.At, j.At.Sub(t.At), nil
}

func (b *bench) forkAcross(n int, mode string) (result, error) {
	before, kBefore, err := b.counters()
	if err != nil {
		return result{}, err
	}
	p, ticket, took, err := b.forkRun(n, "ip", "netns", "exec", b.names[0], b.sfvmm, "run", "--agent", b.agentAddr(0),
		"--cluster-tls", b.tls, "--cluster-name", b.names[0], "--pages", mode)
	if err != nil {
		return result{}, fmt.Errorf("%s: %w", mode, err)
	}
	after, kAfter, err := b.counters()
	if err != nil {
		return result{}, err
	}
	r := result{took: took, sent: after - before, firstUp: b.timeout, kernel: map[string]uint64{}}
	for k, v := range kAfter {
		r.kernel[k] = v - kBefore[k]
	}
	for _, l := range p.Lines(0, p.Mark()) {
		if runningRE.MatchString(l.Text) {
			r.firstUp, r.lastUp = min(r.firstUp, l.At.Sub(ticket)), max(r.lastUp, l.At.Sub(ticket))
		}
		m := statsRE.FindStringSubmatch(l.Text)
		if m == nil {
			continue
		}
		atoi := func(s string) int { v, _ := strconv.Atoi(s); return v }
		p50, _ := time.ParseDuration(m[2])
		// memtap counts the pages installed from the group as fetched.
		r.clones = append(r.clones, clone{fetched: atoi(m[1]) - atoi(m[4]), p50: p50, installed: atoi(m[4]), siblings: atoi(m[5]), retried: atoi(m[6])})
	}
	if len(r.clones) != n {
		return r, fmt.Errorf("%s: statistics of %d clones, want %d:\n%s", mode, len(r.clones), n, p.Tail(40))
	}
	return r, nil
}

// counters reads host0's tx_bytes and the clones' hosts' kernel counters.
func (b *bench) counters() (uint64, map[string]uint64, error) {
	tx, err := b.txBytes()
	if err != nil {
		return 0, nil, err
	}
	k, err := b.snmp()
	return tx, k, err
}

// snmp sums kernelCounters over the clones' hosts.
func (b *bench) snmp() (map[string]uint64, error) {
	sum := map[string]uint64{}
	for _, h := range b.names[1:4] {
		out, err := exec.Command("ip", "netns", "exec", h, "cat", "/proc/net/snmp").Output()
		if err != nil {
			return nil, fmt.Errorf("%s's /proc/net/snmp: %v", h, err)
		}
		lines := strings.Split(string(out), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(names) != len(values) || len(names) == 0 {
				continue
			}
			for j := 1; j < len(names); j++ {
				v, _ := strconv.ParseUint(values[j], 10, 64)
				sum[names[0]+names[j]] += v
			}
		}
	}
	return sum, nil
}

func (b *bench) forkLocal(n int) (time.Duration, error) {
	_, _, took, err := b.forkRun(n, b.sfvmm, "run")
	if err != nil {
		return 0, fmt.Errorf("one host: %w", err)
	}
	return took, nil
}

// coldBoot starts n VMs of the forktest kernel at once, each filling the
// same bytes (its ticker mode), and times the start to the last one's
// "bytes written".
func (b *bench) coldBoot(n int) (time.Duration, error) {
	start := time.Now()
	var ps []*benchproc.Proc
	defer func() {
		for _, p := range ps {
			p.Kill()
		}
	}()
	for range n {
		p, err := benchproc.Start(b.sfvmm, "run", "--kernel", b.forktest, "--memory", b.memory, "--cmdline", "mode=ticker size="+b.size)
		if err != nil {
			return 0, err
		}
		ps = append(ps, p)
	}
	var last time.Time
	for _, p := range ps {
		l, _, _, err := p.WaitLine(0, regexp.MustCompile(`^forktest: \d+ bytes written`), false, b.timeout, fmt.Sprintf("cold boot of %d", n))
		if err != nil {
			return 0, err
		}
		if l.At.After(last) {
			last = l.At
		}
	}
	return last.Sub(start), nil
}
