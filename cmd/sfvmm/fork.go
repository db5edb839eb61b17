package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/sfvmm/sfvmm/memtap"
	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/api"
	"github.com/sfvmm/sfvmm/vmm/devices/forkdev"
	"github.com/sfvmm/sfvmm/vmm/fork"
)

// launcher starts clones as `sfvmm clone` processes of this binary, with
// their console lines (which carry their clone ID) joining the parent's
// console, their stderr this process's, and stdin from /dev/null.
type launcher struct {
	exe     string
	apiSock string        // the parent's; a clone's is derived from it
	vsock   func() string // the parent's vsock socket, once it has one; a clone's is derived from it
	keep    string        // --keep-clone-disks: where clones leave their disks
	console *console      // the parent's, which clones' lines join
	args    []string      // the parent's flags that clones follow (logging, --notify)
}

func newLauncher(apiSock string, vsock func() string, keep string, c *console, args []string) (*launcher, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the sfvmm binary to start clones with: %w", err)
	}
	return &launcher{exe: exe, apiSock: apiSock, vsock: vsock, keep: keep, console: c, args: args}, nil
}

// cloneSocket is clone id of ticket's control socket, next to the parent's.
func cloneSocket(parent string, ticket, id uint32) string {
	if parent == "" {
		return ""
	}
	return fmt.Sprintf("%s.%d-%d", parent, ticket, id)
}

func (l *launcher) Launch(descriptor string, ticket, id uint32) (fork.Clone, error) {
	args := []string{"clone", "--descriptor", descriptor, "--ticket", strconv.FormatUint(uint64(ticket), 10),
		"--id", strconv.FormatUint(uint64(id), 10), "--local-disks"}
	args = append(args, l.args...)
	if s := cloneSocket(l.apiSock, ticket, id); s != "" {
		args = append(args, "--api-sock", s)
	}
	if v := l.vsock(); v != "" {
		args = append(args, "--vsock", cloneSocket(v, ticket, id), "--vsock-dial", v)
	}
	if l.keep != "" {
		args = append(args, "--keep-disks", filepath.Join(l.keep, fmt.Sprintf("%d-%d", ticket, id)))
	}
	cmd := exec.Command(l.exe, args...)
	out := &lines{emit: l.console.writeLine}
	cmd.Stdout, cmd.Stderr = out, os.Stderr
	// A clone fetches its memory from this process: it cannot outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &cloneProcess{cmd: cmd, out: out}, nil
}

// cloneProcess is a clone running as a process.
type cloneProcess struct {
	cmd    *exec.Cmd
	out    *lines
	killed sync.Once
}

func (p *cloneProcess) Wait() error {
	err := p.cmd.Wait()
	p.out.Flush()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Errorf("clone process %d killed by %v", p.cmd.Process.Pid, ws.Signal())
		}
		return fmt.Errorf("clone process %d exited with status %d", p.cmd.Process.Pid, ee.ExitCode())
	}
	return err
}

func (p *cloneProcess) Kill() error {
	var err error
	p.killed.Do(func() { err = p.cmd.Process.Kill() })
	return err
}

// cloneCmd implements `sfvmm clone --descriptor PATH --id K`: one clone of a
// fork, started by its parent's launcher (or, in a later release, by an
// agent on another host).
func cloneCmd(args []string) int {
	fs := flag.NewFlagSet("sfvmm clone", flag.ContinueOnError)
	desc := fs.String("descriptor", "", "fork descriptor written by the parent (required)")
	id := fs.Uint("id", 0, "this clone's ID within its ticket, 1 or more (required)")
	ticket := fs.Uint("ticket", 0, "the ticket the clone belongs to (for messages)")
	host := fs.String("host", "", "the host the clone runs on, for its console lines (set by the agent that runs it)")
	apiSock := fs.String("api-sock", "", "serve the control API on this Unix socket")
	vsockPath := fs.String("vsock", "", "the Unix socket through which host programs reach the clone's vsock ports, if its parent has vsock (default: a new one in the temporary directory, logged)")
	keepDisks := fs.String("keep-disks", "", "when the clone ends, write each of its disks as it saw it to DIR/diskN.img (by default a clone's disk writes are dropped with it)")
	vsockDial := fs.String("vsock-dial", "", "where the clone's guest connections to port N of the host go: DIAL_N (default: the --vsock path's; sfvmm's launcher gives the parent's)")
	quiet := fs.Bool("quiet", false, "do not print how the guest ended")
	notify := addNotifyFlag(fs)
	lf := addLogFlags(fs)
	localDisks := fs.Bool("local-disks", false, "the clone is on its parent's host: it opens the disks' layer files (sfvmm's own launcher sets it); otherwise it reads them through the memory server")
	direct := fs.Bool("direct-reads", true, "read pages the parent has not written since the fork from its memory directly, when the clone is its child process (=false: every page through the memory server)")
	if err := fs.Parse(args); err != nil {
		return usageStatus(err)
	}
	log, err := lf.logger(fmt.Sprintf("sfvmm clone %d: ", *id))
	if err != nil {
		fmt.Fprintf(os.Stderr, "sfvmm clone: %v\n", err)
		return 2
	}
	if *desc == "" || *id == 0 || *id > 1<<16 || fs.NArg() > 0 {
		log.Errorf("usage: sfvmm clone --descriptor PATH --id K [--ticket T] [--api-sock PATH]")
		return 2
	}
	console := &lines{prefix: []byte(cloneLabel(*id, *host)), emit: writeTo(os.Stdout)}
	defer console.Flush()
	start := time.Now()
	vm, mt, err := fork.RestoreClone(*desc, fork.CloneConfig{
		RestoreConfig: vmm.RestoreConfig{Console: console, Log: log.Logger, VsockPath: *vsockPath, VsockDial: *vsockDial, KeepDisks: *keepDisks,
			Notify: notify.n},
		ID:          uint32(*id),
		DirectReads: *direct,
		LocalDisks:  *localDisks,
	})
	if err != nil {
		log.Errorf("%v", err)
		return vmm.StatusError
	}
	defer vm.Close()
	if !*quiet {
		log.Infof("running (ticket %d, restored in %v)", *ticket, time.Since(start).Round(time.Microsecond))
	}
	code := runVM(machine{vm: vm, memtap: mt}, runOptions{apiSock: *apiSock, quiet: *quiet}, log)
	console.Flush()
	log.Infof("memtap: %s", formatMemtapStats(mt.Stats()))
	return code
}

// forkCmd implements `sfvmm fork --api-sock PATH --clones N`, and with
// --join or --kill TICKET the host's sf_join and sf_kill.
func forkCmd(args []string) int {
	fs := flag.NewFlagSet("sfvmm fork", flag.ContinueOnError)
	sock := fs.String("api-sock", "", "control socket of the running sfvmm (required)")
	clones := fs.Int("clones", 0, "fork the running guest into this many clones")
	join := fs.Uint("join", 0, "wait for the clones of this ticket to end")
	kill := fs.Uint("kill", 0, "end the clones of this ticket now")
	wait := fs.Bool("wait", false, "with --clones: wait for the clones to end, as --join does")
	if err := fs.Parse(args); err != nil {
		return usageStatus(err)
	}
	log := newLogger("sfvmm fork: ")
	ops := 0
	for _, set := range []bool{*clones != 0, *join != 0, *kill != 0} {
		if set {
			ops++
		}
	}
	if *sock == "" || ops != 1 || fs.NArg() > 0 {
		log.Errorf("usage: sfvmm fork --api-sock PATH (--clones N [--wait] | --join TICKET | --kill TICKET)")
		return 2
	}
	c := api.Dial(*sock)
	defer c.Close()
	ctx := context.Background()
	switch {
	case *clones != 0:
		info, err := c.Fork(ctx, api.ForkRequest{Clones: *clones})
		if err != nil {
			log.Errorf("%v", err)
			return vmm.StatusError
		}
		fmt.Printf("ticket %d: %d clones started, parent paused %v\n", info.Ticket, len(info.Clones),
			time.Duration(info.PausedNanos).Round(time.Microsecond))
		for i, id := range info.Clones {
			line := fmt.Sprintf("clone %d", id)
			if i < len(info.APISockets) {
				line += " api-sock " + info.APISockets[i]
			}
			fmt.Println(line)
		}
		if *wait {
			return joinTicket(ctx, c, info.Ticket, log)
		}
	case *join != 0:
		return joinTicket(ctx, c, uint32(*join), log)
	case *kill != 0:
		if err := c.Kill(ctx, uint32(*kill)); err != nil {
			log.Errorf("%v", err)
			return vmm.StatusError
		}
		fmt.Printf("ticket %d: clones killed\n", *kill)
	}
	return 0
}

func joinTicket(ctx context.Context, c *api.Client, ticket uint32, log logger) int {
	info, err := c.Join(ctx, ticket)
	if err != nil {
		log.Errorf("%v", err)
		return vmm.StatusError
	}
	fmt.Printf("ticket %d: all clones ended, %d without sf_exit(0)\n", ticket, info.Failed)
	if info.Failed > 0 {
		return vmm.StatusError
	}
	return 0
}

// forkFlags are the fork flags of run and restore.
type forkFlags struct {
	capacity  *int
	keepDisks *string
	cluster   clusterFlags
}

func addForkFlags(fs *flag.FlagSet) forkFlags {
	return forkFlags{
		capacity: fs.Int("fork-capacity", fork.DefaultCapacity,
			"clone slots the guest's tickets may hold at once; 0 disables fork"),
		keepDisks: fs.String("keep-clone-disks", "", "each clone of this host leaves its disks, as it saw them when it ended, in DIR/TICKET-ID/diskN.img "+
			"(by default a clone's disk writes are dropped with it)"),
		cluster: addClusterFlags(fs),
	}
}

// forker returns the machine's fork core, nil when fork is disabled, and
// what to call once it is closed. cloneArgs are the machine's flags that
// its clones on this host take too.
func (f forkFlags) forker(apiSock string, vsock func() string, c *console, log logger, cloneArgs []string) (*fork.Forker, func(), error) {
	if *f.capacity < 0 {
		return nil, nil, fmt.Errorf("--fork-capacity %d: must be 0 or more", *f.capacity)
	}
	if *f.capacity == 0 {
		return nil, func() {}, nil
	}
	cl, serve, err := f.cluster.join(c, log)
	if err != nil {
		return nil, nil, err
	}
	if cl != nil {
		return fork.New(fork.Config{Capacity: *f.capacity, Launcher: cl, ServeAddress: serve,
			Multicast: *f.cluster.pages == "multicast", Log: log.Logger}), cl.Close, nil
	}
	l, err := newLauncher(apiSock, vsock, *f.keepDisks, c, cloneArgs)
	if err != nil {
		return nil, nil, err
	}
	return fork.New(fork.Config{Capacity: *f.capacity, Launcher: l, Log: log.Logger}), func() {}, nil
}

// forkDevice is what vmm's Config.Fork takes for fk: nil when fork is
// disabled.
func forkDevice(fk *fork.Forker) func(*vmm.VM) forkdev.Host {
	if fk == nil {
		return nil
	}
	return fk.Device
}

// formatMemtapStats is a one-line summary of a clone's memory statistics.
func formatMemtapStats(s memtap.Stats) string {
	mc := ""
	if s.BytesMulticast > 0 || s.PagesRetried > 0 || s.MulticastOff > 0 {
		mc = fmt.Sprintf(", multicast: %d pages installed (%d asked by siblings), %d asked again, %d forged and %d replayed datagrams dropped",
			s.PagesMulticast, s.PagesFromSiblings, s.PagesRetried, s.DatagramsForged, s.DatagramsReplayed)
	}
	if s.MulticastOff > 0 {
		mc += "; left the group, where nothing came, for unicast"
	}
	if s.PagesExact > 0 {
		mc += fmt.Sprintf("; disk: %d blocks fetched", s.PagesExact)
	}
	if s.ServerStarved > 0 {
		mc += fmt.Sprintf("; waited %d times for a memory server starved of CPU", s.ServerStarved)
	}
	return fmt.Sprintf("%d faults, %d pages fetched, %d zero-filled locally, %d read from the parent directly, %d prefetched, %d requests, %s received, fault p50 %v p99 %v",
		s.Faults, s.PagesFetched, s.PagesZeroFilled, s.PagesDirect, s.PagesPrefetched, s.Requests, vmm.FormatSize(s.BytesReceived),
		s.Percentile(0.5).Round(time.Microsecond), s.Percentile(0.99).Round(time.Microsecond)) + mc
}

func (m machine) Fork(ctx context.Context, req api.ForkRequest) (api.ForkInfo, error) {
	if m.fork == nil {
		return api.ForkInfo{}, conflict(errForkDisabled)
	}
	r, err := m.fork.Fork(ctx, req.Clones)
	if err != nil {
		return api.ForkInfo{}, conflict(err)
	}
	info := api.ForkInfo{Ticket: r.Ticket, Clones: r.Clones, Descriptor: r.Descriptor, PausedNanos: r.Paused.Nanoseconds()}
	for _, id := range r.Clones {
		if s := cloneSocket(m.apiSock, r.Ticket, id); s != "" {
			info.APISockets = append(info.APISockets, s)
		}
	}
	return info, nil
}

func (m machine) Join(ctx context.Context, req api.TicketRequest) (api.JoinInfo, error) {
	if m.fork == nil {
		return api.JoinInfo{}, conflict(errForkDisabled)
	}
	n, err := m.fork.Join(ctx, req.Ticket)
	if err != nil {
		return api.JoinInfo{}, conflict(err)
	}
	return api.JoinInfo{Failed: n}, nil
}

func (m machine) Kill(_ context.Context, req api.TicketRequest) error {
	if m.fork == nil {
		return conflict(errForkDisabled)
	}
	return conflict(m.fork.Kill(req.Ticket))
}
