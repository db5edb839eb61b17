package main

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kvmbox: "+format+"\n", args...)
}

func warnf(format string, args ...any) { logf("warning: "+format, args...) }

func isRoot() bool { return os.Geteuid() == 0 }

// runOutput runs a helper tool and returns its stdout; on failure the error
// carries the tool's stderr, which usually says what went wrong.
func runOutput(name string, args ...string) (string, error) { return runOutputIn("", name, args...) }

func runOutputIn(dir, name string, args ...string) (string, error) {
	return runOutputEnv(dir, nil, name, args...)
}

// runOutputEnv is runOutputIn with extra environment variables.
func runOutputEnv(dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg != "" {
			return stdout.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, msg)
		}
		return stdout.String(), fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}

// hostTool is a program kvmbox needs on the host, and the Debian package
// that provides it.
type hostTool struct {
	path string // absolute path checked for
	pkg  string
}

var (
	toolQEMU    = hostTool{"/usr/bin/qemu-system-x86_64", "qemu-system-x86"}
	toolBusybox = hostTool{"/bin/busybox", "busybox-static"}
	toolIP      = hostTool{"/usr/sbin/ip", "iproute2"}
	toolPing    = hostTool{"/usr/bin/ping", "iputils-ping"}
)

// ensureTools installs the Debian packages of missing tools with apt-get,
// so that a fresh CI machine needs no setup step of its own.
func ensureTools(tools ...hostTool) error {
	var missing []string
	for _, t := range tools {
		if _, err := os.Stat(t.path); err != nil {
			missing = append(missing, t.pkg)
		}
	}
	if len(missing) > 0 {
		if !isRoot() {
			return fmt.Errorf("missing %s; run as root so kvmbox can install them, or: sudo apt-get install %s",
				strings.Join(missing, ", "), strings.Join(missing, " "))
		}
		logf("installing %s with apt-get", strings.Join(missing, " "))
		args := append([]string{"install", "-y", "--no-install-recommends"}, missing...)
		if _, err := runOutput("apt-get", args...); err != nil {
			// Stale or absent package lists are the usual cause.
			if _, uerr := runOutput("apt-get", "update"); uerr != nil {
				return fmt.Errorf("install packages: %w (apt-get update failed too: %v)", err, uerr)
			}
			if _, err := runOutput("apt-get", args...); err != nil {
				return fmt.Errorf("install packages: %w", err)
			}
		}
	}
	for _, t := range tools {
		if _, err := os.Stat(t.path); err != nil {
			return fmt.Errorf("%s still missing after installing %s", t.path, t.pkg)
		}
	}
	return nil
}

// checkStatic makes sure the busybox we copy into the initramfs has no
// dynamic loader: Debian's plain "busybox" package also installs
// /bin/busybox.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; install busybox-static instead of busybox", path)
		}
	}
	return nil
}

// findCheckout walks up from dir to the go.mod of module
// github.com/sfvmm/sfvmm.
func findCheckout(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		data, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && bytes.Contains(data, []byte("module github.com/sfvmm/sfvmm\n")) {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("%s is not inside the sfvmm checkout (no go.mod of github.com/sfvmm/sfvmm above it)", dir)
		}
	}
}

// buildSfvmm builds ./cmd/sfvmm and ./cmd/sfvmm-agent statically into
// binDir, so that they run unchanged on the host and in the nested guest.
// A checkout without cmd/sfvmm yet is not an error; one that does not
// compile is.
func buildSfvmm(root, binDir string) error {
	if _, err := os.Stat(filepath.Join(root, "cmd", "sfvmm")); errors.Is(err, os.ErrNotExist) {
		warnf("no cmd/sfvmm in %s; sfvmm will not be on PATH", root)
		return nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	for _, c := range []string{"sfvmm", "sfvmm-agent"} {
		if _, err := os.Stat(filepath.Join(root, "cmd", c)); errors.Is(err, os.ErrNotExist) {
			continue
		}
		cmd := exec.Command(goBin, "build", "-o", filepath.Join(binDir, c), "./cmd/"+c)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build ./cmd/%s: %w\n%s(use --no-build to run without rebuilding sfvmm)", c, err, out)
		}
	}
	return nil
}

// kvmUsable reports whether /dev/kvm opens read-write and speaks KVM API
// version 12, the only one Linux has ever shipped.
func kvmUsable() (bool, string) {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Sprintf("open /dev/kvm: %v", err)
	}
	defer unix.Close(fd)
	v, err := unix.IoctlRetInt(fd, 0xAE00) // KVM_GET_API_VERSION
	if err != nil {
		return false, fmt.Sprintf("KVM_GET_API_VERSION: %v", err)
	}
	if v != 12 {
		return false, fmt.Sprintf("KVM_GET_API_VERSION returned %d, want 12", v)
	}
	if !hardwareVirt() {
		// Seen on our own machines: kvm-pvm, a software KVM that needs no
		// VMX/SVM. It runs simple guests but is slow on every page fault
		// and cannot emulate all events (a triple fault ends in an
		// internal error), so tests run in the faithful nested sandbox.
		return false, "/dev/kvm works but the CPU shows no vmx or svm flag (a software KVM such as kvm-pvm); --direct uses it anyway"
	}
	return true, ""
}

// hardwareVirt reports whether the CPU flags include VMX or SVM, i.e.
// whether /dev/kvm is hardware-assisted.
func hardwareVirt() bool {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "flags") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
		return false
	}
	return false
}

// lockCache takes an exclusive lock on the cache so that concurrent kvmbox
// runs do not download or build the same thing twice at once. The lock goes
// away with the process.
func lockCache(cache string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(cache, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return f, nil
}
