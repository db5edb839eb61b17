package main

import (
	"github.com/sfvmm/sfvmm/tests/bench/internal/benchproc"

	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/sfvmm/sfvmm/vmm/api"
)

// sfvmmResult is one size's sfvmm figures.
type sfvmmResult struct {
	fill        fill
	descBytes   int64 // from the API
	memBytes    int64 // populated memory written, from the API
	pages       uint64
	memFileSize int64 // apparent size of the memory file
	memFileDisk int64 // what it occupies on disk
	paused      time.Duration
	write       time.Duration
	restoreOwn  time.Duration // sfvmm's "restored DIR in D"
	restoreTick time.Duration // process start to the first tick after restore
	ticks       tickCheck
}

var restoredRE = regexp.MustCompile(`restored .* in (\S+)$`)

// benchSfvmm boots the guest in sfvmm, snapshots it through the control
// API once it has filled its RAM, and restores the snapshot.
func benchSfvmm(b *bench, memMiB int) (r sfvmmResult, err error) {
	dir := filepath.Join(b.tmp, fmt.Sprintf("sfvmm-%d", memMiB))
	sock := filepath.Join(b.sockDir, fmt.Sprintf("sfvmm-%d.sock", memMiB))
	os.RemoveAll(dir)
	os.Remove(sock)
	defer os.RemoveAll(dir)
	defer os.Remove(sock)

	vm, err := benchproc.Start(b.sfvmm, "run", "--kernel", b.kernel, "--initrd", b.initrd,
		"--cmdline", b.cmdline(memMiB), "--cpus", "1", "--memory", fmt.Sprintf("%dM", memMiB), "--api-sock", sock)
	if err != nil {
		return r, err
	}
	defer vm.Kill()
	if r.fill, err = waitFill(vm, b.bootTimeout, "sfvmm run"); err != nil {
		return r, err
	}
	if err := benchproc.WaitFile(context.Background(), sock, 30*time.Second, vm); err != nil {
		return r, err
	}
	c := api.Dial(sock)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	st, err := c.Status(ctx)
	cancel()
	if err != nil {
		return r, fmt.Errorf("sfvmm status: %w", err)
	}
	if st.State != api.StateRunning {
		return r, fmt.Errorf("sfvmm status before the snapshot: state %q, want %q", st.State, api.StateRunning)
	}

	r.ticks.before = lastTick(vm, vm.Mark())
	ctx, cancel = context.WithTimeout(context.Background(), b.opTimeout)
	info, err := c.Snapshot(ctx, api.SnapshotRequest{Dir: dir})
	cancel()
	if err != nil {
		return r, fmt.Errorf("sfvmm snapshot: %w\nguest output:\n%s", err, vm.Tail(20))
	}
	r.descBytes, r.memBytes, r.pages = info.DescriptorBytes, info.MemoryBytes, info.Pages
	r.paused, r.write = time.Duration(info.PausedNanos), time.Duration(info.WriteNanos)
	// StayPaused was false: the original must keep running. The state was
	// saved before it printed its first tick after the snapshot.
	if r.ticks.after, err = nextTick(vm, vm.Mark(), 60*time.Second, "guest running on after the snapshot"); err != nil {
		return r, err
	}
	if err := vm.Kill(); err != nil {
		return r, err
	}
	if r.memFileSize, r.memFileDisk, err = fileSizes(filepath.Join(dir, "memory")); err != nil {
		return r, err
	}
	if fi, err := os.Stat(filepath.Join(dir, "descriptor")); err != nil {
		return r, err
	} else if fi.Size() != r.descBytes {
		b.notef("sfvmm %d MiB: the API said descriptor_bytes=%d, the descriptor file has %d bytes", memMiB, r.descBytes, fi.Size())
	}

	rs, err := benchproc.Start(b.sfvmm, "restore", dir)
	if err != nil {
		return r, err
	}
	defer rs.Kill()
	l, _, m, err := rs.WaitLine(0, tickRE, false, b.opTimeout, "sfvmm restore")
	if err != nil {
		return r, err
	}
	r.restoreTick = l.At.Sub(rs.Start)
	r.ticks.restored, _ = strconv.Atoi(m[1])
	if _, _, m, err = rs.WaitLine(0, restoredRE, true, 10*time.Second, "sfvmm restore"); err != nil {
		return r, err
	}
	if r.restoreOwn, err = time.ParseDuration(m[1]); err != nil {
		return r, fmt.Errorf("sfvmm restore: cannot read the duration in %q: %w", m[0], err)
	}
	return r, rs.Kill()
}
