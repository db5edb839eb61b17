package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// runDirect runs CMD on this machine, whose /dev/kvm works.
func (b *box) runDirect(k *kernel) (int, error) {
	o := b.opts
	if o.hosts > 0 && !isRoot() && !o.hostsSet {
		warnf("not root, so no network namespaces (the default --hosts 1 needs root when /dev/kvm is used directly)")
		o.hosts = 0
	}
	env := b.cmdEnv(k, "direct")
	if o.hosts > 0 {
		if !isRoot() {
			return exitSetup, errors.New("--hosts needs root to create network namespaces; run as root, or pass --hosts 0")
		}
		if err := ensureTools(toolIP, toolPing); err != nil {
			return exitSetup, err
		}
		for i := range o.hosts {
			if _, err := os.Stat(filepath.Join("/run/netns", hostName(i))); err == nil {
				return exitSetup, fmt.Errorf("network namespace %s exists already (another kvmbox run, or left over: ip netns delete %s)", hostName(i), hostName(i))
			}
		}
		defer func() {
			if err := runBatch(hostsTeardown(o.hosts)); err != nil {
				warnf("tear down --hosts network: %v", err)
			}
		}()
		for _, batch := range hostsSetup(o.hosts) {
			if err := runBatch(batch); err != nil {
				return exitSetup, fmt.Errorf("set up --hosts network: %w", err)
			}
		}
	}

	// exec.Command searches the PATH of this process, so give it CMD's.
	for _, kv := range env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			os.Setenv("PATH", p)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, o.cmd[0], o.cmd[1:]...)
	cmd.Env, cmd.Dir = env, b.cwd
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// CMD shares the terminal's process group and gets ^C itself; kvmbox
	// stays to tear the network down once CMD is gone.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	started := time.Now()
	if err := cmd.Start(); err != nil {
		return exitSetup, fmt.Errorf("start %s: %w", o.cmd[0], err)
	}
	err := cmd.Wait()
	rc := exitCode(cmd.ProcessState)
	if ctx.Err() != nil {
		return exitTimeout, fmt.Errorf("timed out after %v; killed %s", o.timeout, o.cmd[0])
	}
	if err != nil && rc < 0 {
		return exitSetup, err
	}
	if !o.quiet {
		logf("ran directly (/dev/kvm usable), CMD exited %d after %.1f s", rc, time.Since(started).Seconds())
	}
	return rc, nil
}

// exitCode is the status a shell would report: 128+n for signal n.
func exitCode(ps *os.ProcessState) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

func runBatch(b ipBatch) error {
	args := b.args()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(strings.Join(b.lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}
