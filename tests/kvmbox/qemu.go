package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The sandbox's emulator: Debian 13's QEMU 10.0, which ran the KVM tests
// in about half the time of Debian 12's 7.2 (two vCPUs, same machine).
// Under TCG both corrupt nested guests with two vCPUs (see qemuArgs), and
// both stall a one-vCPU sandbox now and then (see stallWatch). kvmbox
// fetches it from the trixie suite of the host's own Debian archive and
// runs it from a private root, without installing anything on the host:
// its dynamic loader, started directly, loads QEMU against the root's
// libraries.
const (
	qemuDebian13 = "debian13" // --qemu: Debian 13's QEMU from a private root
	qemuSystem   = "system"   // --qemu: the host's /usr/bin/qemu-system-x86_64

	kernelDebian13 = "debian13" // --sandbox-kernel: Debian 13's kernel
	kernelSystem   = "system"   // --sandbox-kernel: the host suite's kernel

	debian13 = "trixie" // the suite both come from
	qemuPkg  = "qemu-system-x86"
)

// outerQEMU is how to start the emulator that runs the sandbox guest.
type outerQEMU struct {
	argv     []string // the program and the arguments before QEMU's own
	firmware []string // -L directories
	env      []string // added to QEMU's environment
}

// command returns an exec.Cmd that runs QEMU with args.
func (q *outerQEMU) command(args ...string) *exec.Cmd {
	var all []string
	all = append(all, q.argv[1:]...)
	for _, d := range q.firmware {
		all = append(all, "-L", d)
	}
	cmd := exec.Command(q.argv[0], append(all, args...)...)
	cmd.Env = append(os.Environ(), q.env...)
	return cmd
}

// ensureOuterQEMU returns the QEMU that --qemu names, fetching Debian 13's
// into the cache on first use.
func ensureOuterQEMU(cache, which string) (*outerQEMU, error) {
	switch which {
	case qemuSystem:
		if err := ensureTools(toolQEMU); err != nil {
			return nil, err
		}
		return &outerQEMU{argv: []string{toolQEMU.path}}, nil
	case qemuDebian13:
		root, err := ensureSuiteQEMU(cache)
		if err != nil {
			return nil, fmt.Errorf("Debian 13's QEMU: %w", err)
		}
		return privateQEMU(root), nil
	}
	return nil, fmt.Errorf("--qemu %q: want %s or %s", which, qemuDebian13, qemuSystem)
}

// privateQEMU starts the QEMU unpacked at root through root's own loader.
// QEMU finds its loadable modules (display and audio back ends it does not
// need here) through QEMU_MODULE_DIR and its firmware through -L, as its
// compiled-in paths name the host's /usr.
func privateQEMU(root string) *outerQEMU {
	lib := filepath.Join(root, "usr", "lib", "x86_64-linux-gnu")
	return &outerQEMU{
		argv: []string{filepath.Join(lib, "ld-linux-x86-64.so.2"), "--library-path", lib,
			filepath.Join(root, "usr", "bin", "qemu-system-x86_64")},
		firmware: []string{filepath.Join(root, "usr", "share", "qemu"), filepath.Join(root, "usr", "share", "seabios")},
		env:      []string{"QEMU_MODULE_DIR=" + filepath.Join(lib, "qemu")},
	}
}

// ensureSuiteQEMU unpacks qemu-system-x86 of the trixie suite and every
// package it depends on into the cache (about 170 MB, fetched once) and
// returns that root.
func ensureSuiteQEMU(cache string) (string, error) {
	root := filepath.Join(cache, "qemu-"+debian13)
	if exists(filepath.Join(root, ".complete")) {
		return root, nil
	}
	if !isRoot() {
		return "", fmt.Errorf("%s is not fetched yet and that needs root (apt-get); run kvmbox once as root, or pass --qemu %s", root, qemuSystem)
	}
	logf("fetching %s from Debian %s into %s (first run only)", qemuPkg, debian13, root)
	apt, err := newSuiteApt(filepath.Join(cache, "apt-"+debian13), debian13)
	if err != nil {
		return "", err
	}
	if err := apt.update(); err != nil {
		return "", err
	}
	archives := filepath.Join(apt.dir, "cache", "archives")
	defer removeDebs(archives)
	if _, err := runOutputEnv("", apt.env(), "apt-get", "install", "--download-only", "-y", qemuPkg); err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(archives, "*.deb"))
	if len(debs) == 0 {
		return "", fmt.Errorf("apt-get install --download-only %s left no packages in %s", qemuPkg, archives)
	}
	tmp := root + ".tmp"
	os.RemoveAll(tmp)
	for _, deb := range debs {
		if _, err := runOutput("dpkg", "-x", deb, tmp); err != nil {
			return "", fmt.Errorf("unpack %s: %w", filepath.Base(deb), err)
		}
	}
	out, err := privateQEMU(tmp).command("--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("the unpacked QEMU does not start: %w\n%s", err, out)
	}
	version, _, _ := strings.Cut(string(out), "\n")
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), []byte(version+"\n"), 0o644); err != nil {
		return "", err
	}
	os.RemoveAll(root)
	if err := os.Rename(tmp, root); err != nil {
		return "", err
	}
	logf("%s", version)
	return root, nil
}

func removeDebs(dir string) {
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	for _, d := range debs {
		os.Remove(d)
	}
}
