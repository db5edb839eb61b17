//go:build kvm

package tests

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/snapshot"
	"github.com/sfvmm/sfvmm/vmm/vmtest"
)

var tickRE = regexp.MustCompile(`tick (\d+) up=(\d+\.\d+)`)

// lastTick returns the number and guest uptime of the last complete tick
// line in out.
func lastTick(out string) (n int, up float64) {
	m := tickRE.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		return 0, 0
	}
	l := m[len(m)-1]
	n, _ = strconv.Atoi(l[1])
	up, _ = strconv.ParseFloat(l[2], 64)
	return n, up
}

// A 2-vCPU Linux guest, snapshotted while a busybox loop writes to the
// console, continues in a new sfvmm process: the loop goes on, its clock
// does not go back, the shell answers a command, and the guest reseeds
// its random number generator for the new VM generation ID.
func TestSnapshotLinux(t *testing.T) {
	kernel, initrd := linuxKernel(t)
	bin := sfvmmPath(t)
	dir := t.TempDir()
	sock, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")

	p := start(t, bin, "run", "--api-sock", sock, "--cpus", "2", "--memory", "256M",
		"--kernel", kernel, "--initrd", initrd, "--cmdline", linuxCmdline)
	p.waitFor(t, "sfvmm-init: 2 cpus", 3*time.Minute)
	p.typeLine(t, `(i=0; while true; do i=$((i+1)); echo "tick $i up=$(cut -d' ' -f1 /proc/uptime)"; sleep 0.2; done) &`)
	p.waitFor(t, "tick 5 up=", time.Minute)

	out, code := run(t, 2*time.Minute, bin, "snapshot", "--api-sock", sock, "--out", snap, "--paused")
	if code != 0 {
		t.Fatalf("sfvmm snapshot: exit %d\n%s", code, out)
	}
	t.Log(strings.TrimSpace(out))
	before := p.Output()
	n1, up1 := lastTick(before)
	p.cmd.Process.Signal(unix.SIGTERM)
	if code := p.wait(t, time.Minute); code != 128+int(unix.SIGTERM) {
		t.Errorf("the snapshotted sfvmm exited %d on SIGTERM, want %d", code, 128+int(unix.SIGTERM))
	}

	r := start(t, bin, "restore", snap)
	r.waitFor(t, fmt.Sprintf("tick %d up=", n1+3), time.Minute)
	n2, up2 := lastTick(r.Output())
	if n2 <= n1 || up2 < up1 {
		t.Errorf("after restore tick %d at uptime %.2f; before it tick %d at %.2f: guest time went back", n2, up2, n1, up1)
	}
	r.typeLine(t, "echo answer=$((6*7))")
	r.waitFor(t, "answer=42", time.Minute)
	// The restored VM has a new generation ID, which the guest heard of
	// and reseeded its random number generator from (the brackets keep
	// the typed line itself from matching).
	r.typeLine(t, `for i in $(seq 120); do dmesg | grep -q 'reseeded due to virtual machine for[k]' && break; sleep 0.5; done; `+
		`echo vmgenid reseeds=$(dmesg | grep -c 'reseeded due to virtual machine for[k]')`)
	r.waitFor(t, "vmgenid reseeds=1", 2*time.Minute)
	r.typeLine(t, "poweroff -f")
	if code := r.wait(t, time.Minute); code != 0 {
		t.Errorf("restored guest's power-off: exit %d\n%s", code, r.Output())
	}
}

// inNetns runs f on an OS thread that has joined network namespace ns (a
// sandbox host made by kvmbox --hosts).
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it leaves with the goroutine
		// rather than carry the namespace back to the scheduler.
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", ns, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

func sandboxHosts(t *testing.T) (names, addrs []string) {
	t.Helper()
	names, addrs = strings.Fields(os.Getenv("SFVMM_HOSTS")), strings.Fields(os.Getenv("SFVMM_HOST_ADDRS"))
	if len(names) < 2 || len(addrs) != len(names) {
		t.Fatalf("need two sandbox hosts (kvmbox --hosts 2); SFVMM_HOSTS=%q", os.Getenv("SFVMM_HOSTS"))
	}
	return names, addrs
}

// sendDir copies the regular files of src over TCP from host from to
// directory dst on host to: a snapshot moving between machines.
func sendDir(t *testing.T, src, dst, from, to, toAddr string) {
	t.Helper()
	var ln net.Listener
	if err := inNetns(to, func() (err error) { ln, err = net.Listen("tcp", net.JoinHostPort(toAddr, "7450")); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	recv := make(chan error, 1)
	go func() { recv <- receiveFiles(ln, dst) }()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	err = inNetns(from, func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(toAddr, "7450"), 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		for _, e := range entries {
			f, err := os.Open(filepath.Join(src, e.Name()))
			if err != nil {
				return err
			}
			st, _ := f.Stat()
			hdr := binary.AppendUvarint(nil, uint64(len(e.Name())))
			hdr = append(hdr, e.Name()...)
			hdr = binary.AppendUvarint(hdr, uint64(st.Size()))
			if _, err := c.Write(hdr); err != nil {
				return err
			}
			_, err = io.Copy(c, f)
			f.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send %s from %s: %v", src, from, err)
	}
	if err := <-recv; err != nil {
		t.Fatalf("receive on %s: %v", to, err)
	}
}

type byteReader struct{ io.Reader }

func (b byteReader) ReadByte() (byte, error) {
	var x [1]byte
	_, err := io.ReadFull(b.Reader, x[:])
	return x[0], err
}

func receiveFiles(ln net.Listener, dst string) error {
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	br := byteReader{c}
	for {
		n, err := binary.ReadUvarint(br)
		if err == io.EOF {
			return nil
		}
		if err != nil || n > 255 {
			return fmt.Errorf("bad file name length %d: %v", n, err)
		}
		name := make([]byte, n)
		if _, err := io.ReadFull(c, name); err != nil {
			return err
		}
		size, err := binary.ReadUvarint(br)
		if err != nil {
			return err
		}
		f, err := os.Create(filepath.Join(dst, filepath.Base(string(name))))
		if err != nil {
			return err
		}
		_, err = io.CopyN(f, c, int64(size))
		f.Close()
		if err != nil {
			return err
		}
	}
}

// A snapshot copied over the network to another sandbox host (its own
// network stack) restores there the same.
func TestRestoreOnOtherHost(t *testing.T) {
	hosts, addrs := sandboxHosts(t)
	dir, before := snapshotAfter(t, vmtest.Options{
		Kernel: vmtest.Kernel(t, "counter"), Cmdline: fmt.Sprintf("max=%d delay=0", counterMax), Memory: 32 << 20,
	}, "count 100\r\n")
	copied := filepath.Join(t.TempDir(), "copied")
	sendDir(t, dir, copied, hosts[0], hosts[1], addrs[1])
	out, code := run(t, 2*time.Minute, "ip", "netns", "exec", hosts[1], sfvmmPath(t), "restore", "--quiet", copied)
	if code != 1 {
		t.Fatalf("restore on %s: exit %d, want 1\n%s", hosts[1], code, out)
	}
	if got := checkConsecutive(t, before+out); got != counterMax {
		t.Errorf("counted to %d across hosts, want %d", got, counterMax)
	}
}

// A snapshot that is damaged, from a future sfvmm, short of memory or made
// on a CPU with features this host lacks is refused with a clear error and
// no guest output.
func TestRestoreRefusesBadSnapshots(t *testing.T) {
	good, _ := snapshotAfter(t, vmtest.Options{
		Kernel: vmtest.Kernel(t, "counter"), Cmdline: "max=100000 delay=1000", Memory: 32 << 20,
	}, "count 10\r\n")
	desc, err := os.ReadFile(filepath.Join(good, "descriptor"))
	if err != nil {
		t.Fatal(err)
	}
	clone := func(t *testing.T, edit func(dir string)) string {
		dir := filepath.Join(t.TempDir(), "snap")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"descriptor", "memory"} {
			b, err := os.ReadFile(filepath.Join(good, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		edit(dir)
		return dir
	}
	writeDesc := func(dir string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, "descriptor"), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		edit func(dir string)
		want string
	}{
		{"truncated descriptor", func(d string) { writeDesc(d, desc[:len(desc)/2]) }, "descriptor"},
		{"corrupted descriptor", func(d string) {
			b := append([]byte(nil), desc...)
			b[len(b)/2] ^= 0x40
			writeDesc(d, b)
		}, "corrupt"},
		{"unknown version", func(d string) {
			b := append([]byte(nil), desc...)
			binary.LittleEndian.PutUint32(b[8:], snapshot.Version+1)
			writeDesc(d, b)
		}, fmt.Sprintf("version %d", snapshot.Version+1)},
		{"short memory file", func(d string) {
			if err := os.Truncate(filepath.Join(d, "memory"), 1<<20); err != nil {
				t.Fatal(err)
			}
		}, "memory file is"},
		{"missing CPU features", func(d string) {
			h, st, err := vmm.ReadSnapshot(d)
			if err != nil {
				t.Fatal(err)
			}
			for i := range st.VCPUs {
				for j := range st.VCPUs[i].CPUID {
					if e := &st.VCPUs[i].CPUID[j]; e.Function == 7 && e.Index == 0 {
						e.EBX = 0xffffffff // every leaf-7 feature, more than any CPU has
					}
				}
			}
			b, err := snapshot.Encode(h, st)
			if err != nil {
				t.Fatal(err)
			}
			writeDesc(d, b)
		}, "CPU features this host lacks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := clone(t, tc.edit)
			out, code := run(t, time.Minute, sfvmmPath(t), "restore", dir)
			if code != 1 {
				t.Errorf("exit %d, want 1\n%s", code, out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("output does not mention %q:\n%s", tc.want, out)
			}
			if strings.Contains(out, "count ") || strings.Contains(out, "panic") {
				t.Errorf("a refused snapshot ran or panicked:\n%s", out)
			}
		})
	}
}
