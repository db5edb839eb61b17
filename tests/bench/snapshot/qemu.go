package main

import (
	"github.com/sfvmm/sfvmm/tests/bench/internal/benchproc"

	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// qemuResult is one size's QEMU figures.
type qemuResult struct {
	fill        fill
	stoppedSave time.Duration // stop, then migrate to a file until completed
	stopped     migrateInfo
	stoppedFile int64
	liveWall    time.Duration // live (pre-copy) migrate to a file until completed
	live        migrateInfo
	liveFile    int64
	restoreTick time.Duration // process start to the first tick after restore
	restoreRun  time.Duration // process start to query-status "running"
	ticks       tickCheck
}

// qemuMaxBandwidth lifts QEMU's migration bandwidth cap (128 MiB/s by
// default), which would otherwise set the time of a migration to a file.
const qemuMaxBandwidth = 64 << 30

func (b *bench) qemuArgs(memMiB int, qmpSock string) []string {
	// -nodefaults: no VGA (whose 16 MiB of video RAM would be migrated),
	// NIC, floppy or CD-ROM, which sfvmm does not have either.
	return []string{"-enable-kvm", "-cpu", "host", "-M", "pc", "-m", strconv.Itoa(memMiB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
		"-kernel", b.kernel, "-initrd", b.initrd, "-append", b.cmdline(memMiB),
		"-qmp", "unix:" + qmpSock + ",server=on,wait=off"}
}

// benchQEMU boots the same guest in QEMU, saves it twice through QMP
// migration to a file (stopped first, then live), and restores the live
// one with -incoming.
func benchQEMU(b *bench, memMiB int) (r qemuResult, err error) {
	sock := filepath.Join(b.sockDir, fmt.Sprintf("qemu-%d.qmp", memMiB))
	stoppedFile := filepath.Join(b.tmp, fmt.Sprintf("qemu-%d-stopped.mig", memMiB))
	liveFile := filepath.Join(b.tmp, fmt.Sprintf("qemu-%d-live.mig", memMiB))
	for _, f := range []string{sock, stoppedFile, liveFile} {
		os.Remove(f)
		defer os.Remove(f)
	}

	vm, err := benchproc.Start(b.qemu, b.qemuArgs(memMiB, sock)...)
	if err != nil {
		return r, err
	}
	defer vm.Kill()
	if r.fill, err = waitFill(vm, b.bootTimeout, "qemu"); err != nil {
		return r, err
	}
	if err := benchproc.WaitFile(context.Background(), sock, 30*time.Second, vm); err != nil {
		return r, err
	}
	q, err := dialQMP(sock, 30*time.Second)
	if err != nil {
		return r, err
	}
	defer q.close()
	if err := q.call("migrate-set-parameters", map[string]any{"max-bandwidth": qemuMaxBandwidth}, nil, 30*time.Second); err != nil {
		return r, err
	}

	// Stopped save: comparable with sfvmm's snapshot, which pauses the
	// guest for all of it.
	start := time.Now()
	if err := q.call("stop", nil, nil, 30*time.Second); err != nil {
		return r, err
	}
	if r.stopped, err = q.migrate("exec:cat > "+stoppedFile, b.opTimeout); err != nil {
		return r, fmt.Errorf("qemu stopped save: %w", err)
	}
	r.stoppedSave = time.Since(start)
	if r.stoppedFile, _, err = fileSizes(stoppedFile); err != nil {
		return r, err
	}
	os.Remove(stoppedFile)
	if err := q.call("cont", nil, nil, 30*time.Second); err != nil {
		return r, err
	}
	if _, err := nextTick(vm, vm.Mark(), 60*time.Second, "qemu guest running on after cont"); err != nil {
		return r, err
	}

	// Live save: QEMU's usual way, pre-copy while the guest runs, then a
	// short stop for the rest. It leaves the source stopped.
	r.ticks.before = lastTick(vm, vm.Mark())
	start = time.Now()
	if r.live, err = q.migrate("exec:cat > "+liveFile, b.opTimeout); err != nil {
		return r, fmt.Errorf("qemu live save: %w", err)
	}
	r.liveWall = time.Since(start)
	// The guest ran during the pre-copy; the state is from its end. The
	// source is stopped now: what it printed is all in the pipe, give the
	// bench a moment to read it.
	time.Sleep(500 * time.Millisecond)
	r.ticks.after = lastTick(vm, vm.Mark()) + 1
	if r.liveFile, _, err = fileSizes(liveFile); err != nil {
		return r, err
	}
	q.call("quit", nil, nil, 10*time.Second) // QEMU may close the socket before it answers
	if exited, _ := vm.ExitedWithin(10 * time.Second); !exited {
		b.notef("qemu %d MiB: did not exit within 10s of quit; killed", memMiB)
	}
	vm.Kill()
	os.Remove(sock)

	// Restore the live file: its guest was running, so QEMU starts it as
	// soon as the state is loaded (a stopped save would restore paused).
	rs, err := benchproc.Start(b.qemu, append(b.qemuArgs(memMiB, sock), "-incoming", "exec:cat "+liveFile)...)
	if err != nil {
		return r, err
	}
	defer rs.Kill()
	var runAt time.Duration // written by the goroutine before it sends
	running := make(chan error, 1)
	go func() { running <- waitRunning(rs, sock, b.opTimeout, &runAt) }()
	l, _, m, err := rs.WaitLine(0, tickRE, false, b.opTimeout, "qemu -incoming")
	if err != nil {
		return r, err
	}
	r.restoreTick = l.At.Sub(rs.Start)
	r.ticks.restored, _ = strconv.Atoi(m[1])
	if err := <-running; err != nil {
		return r, err
	}
	r.restoreRun = runAt
	return r, rs.Kill()
}

// waitRunning polls QMP query-status of a QEMU loading an incoming
// migration until it says running, and stores the time since it started.
func waitRunning(p *benchproc.Proc, sock string, timeout time.Duration, d *time.Duration) error {
	deadline := time.Now().Add(timeout)
	if err := benchproc.WaitFile(context.Background(), sock, timeout, p); err != nil {
		return err
	}
	var q *qmp
	for {
		var err error
		if q, err = dialQMP(sock, 30*time.Second); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu -incoming: %w", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	defer q.close()
	for {
		var st struct {
			Status string `json:"status"`
		}
		if err := q.call("query-status", nil, &st, 30*time.Second); err != nil {
			return fmt.Errorf("qemu -incoming: %w", err)
		}
		if st.Status == "running" {
			*d = time.Since(p.Start)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu -incoming: query-status still %q after %v", st.Status, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
