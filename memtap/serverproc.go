package memtap

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// serverProc is a memory server on this host as the kernel sees it.
//
// Keep-alives tell a live server from a gone one only while the server
// gets the CPU to send them. A server on this host shares the CPUs with
// its clients and starves with them: in TestFork16Clones the server (one
// process with some twenty threads, for sixteen clones and the parent's
// copy-before-write) went up to 3.6 s between keep-alives on a one-CPU
// sandbox under host load, and a clone once gave up on it after 5 s
// without one while it went on serving the others. The kernel knows the difference: a busy server
// uses CPU time, a starved one has threads waiting for a CPU or held up
// in the kernel (an uninterruptible wait: reclaim, the parent's memory
// map, which its reads of the parent's pages lock), while a stopped one,
// or one idle or deadlocked in its own code, does neither. A silent
// server on this host is waited for, up to Config.StuckAfter, while its
// process runs or waits to.
type serverProc struct {
	pid int
	at  time.Time     // when cpu was read
	cpu time.Duration // the CPU time of the process's threads then
	// ran: whether it ran, or waited to, between the last two reads;
	// until a second read (seen), it is taken to have.
	ran, seen bool
	why       string // what the last read saw, for an error
}

// peerProc returns the process serving the Unix socket c, or nil if the
// kernel does not say (another PID namespace, not a Unix socket).
func peerProc(c net.Conn) *serverProc {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var cred *unix.Ucred
	rc.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if err != nil || cred.Pid <= 0 {
		return nil
	}
	return &serverProc{pid: int(cred.Pid)}
}

// watch starts a silence at now: the process is taken to be running until
// a read at least a stretch later says otherwise.
func (p *serverProc) watch(now time.Time) {
	p.cpu, _, _ = procCPU(p.pid)
	p.at, p.ran, p.seen, p.why = now, true, false, ""
}

// running reports whether the process ran, or had a thread waiting to,
// over the last stretch of at least every since watch; it reads the
// process at most once per every.
func (p *serverProc) running(now time.Time, every time.Duration) bool {
	if now.Sub(p.at) < every {
		return p.ran
	}
	cpu, waiting, err := procCPU(p.pid)
	switch {
	case err != nil:
		p.ran, p.why = false, err.Error()
	case cpu > p.cpu || waiting:
		p.ran, p.why = true, ""
	default:
		p.ran, p.why = false, fmt.Sprintf("asleep, no CPU time used in %v", now.Sub(p.at).Round(time.Millisecond))
	}
	p.cpu, p.at, p.seen = cpu, now, true
	return p.ran
}

// String says what the last read of the process found.
func (p *serverProc) String() string {
	if p.why == "" {
		return fmt.Sprintf("server process %d", p.pid)
	}
	return fmt.Sprintf("server process %d: %s", p.pid, p.why)
}

// procCPU returns the CPU time pid's threads have used and whether one of
// them waits to run: runnable (running, or waiting for a CPU) or in an
// uninterruptible wait in the kernel. A process that is gone, or whose
// threads are all stopped (SIGSTOP, a tracer), is an error.
func procCPU(pid int) (time.Duration, bool, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, false, fmt.Errorf("gone (%v)", err)
	}
	var cpu time.Duration
	waiting, stopped := false, 0
	for _, t := range tasks {
		// A thread that ends between the listing and these reads
		// is skipped: its time no longer counts either way.
		stat, err := os.ReadFile(dir + "/" + t.Name() + "/stat")
		if err != nil {
			continue
		}
		// The state follows the command name, which is in
		// parentheses and may hold anything, so look after the last.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 || i+2 >= len(stat) {
			continue
		}
		switch stat[i+2] {
		case 'R', 'D':
			waiting = true
		case 'T', 't':
			stopped++
		}
		// schedstat's first field is the thread's time on a CPU in
		// nanoseconds; stat's utime and stime count whole ticks.
		ss, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(ss))
		if len(f) == 0 {
			continue
		}
		if ns, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			cpu += time.Duration(ns)
		}
	}
	if stopped > 0 && stopped == len(tasks) {
		return cpu, false, errors.New("stopped")
	}
	return cpu, waiting, nil
}
