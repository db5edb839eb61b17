//go:build kvm

package tests

import (
	"crypto/md5"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/kernels/diskimage"
)

// diskModules are the modules a guest loads, after virtioModules, to
// mount an ext4 virtio disk: Debian's kernel has ext4 and its checksum
// as modules, and init has no modprobe to fetch crc32c on demand.
var diskModules = []string{"drivers/block/virtio_blk", "crypto/crc32c_generic", "lib/crc16", "fs/mbcache", "fs/jbd2/jbd2", "fs/ext4/ext4"}

// diskGuest returns a kernel, an initrd with the disk modules, and the
// shell command that loads them and mounts /dev/vda on /mnt, for a guest
// whose devices are virtio-mmio.
func diskGuest(t *testing.T) (kernel, initrd, mount string) {
	t.Helper()
	return diskGuestOn(t, transports[0])
}

// diskGuestOn is diskGuest for a guest whose devices are on tr.
func diskGuestOn(t *testing.T, tr transport) (kernel, initrd, mount string) {
	t.Helper()
	kernel, initrd = linuxKernel(t)
	mods := slices.Concat(tr.mods, diskModules)
	return kernel, initrdWithModules(t, initrd, mods...), insmods(mods...) + " && mkdir -p /mnt && mount /dev/vda /mnt"
}

// ext4Image makes an ext4 image of 64 MiB in a new directory holding
// files (guest path → contents).
func ext4Image(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "files")
	for p, c := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(src, p)), 0o755)
		if err := os.WriteFile(filepath.Join(src, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "disk.img")
	if err := diskimage.Ext4(img, src, 64<<20); err != nil {
		t.Fatal(err)
	}
	return img
}

// imageFile reads a file from an ext4 image as a host tool does, after
// replaying the journal on a copy (a guest's sync commits to the journal
// first).
func imageFile(t *testing.T, img, path string) string {
	t.Helper()
	cp := filepath.Join(t.TempDir(), "check.img")
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cp, b, 0o600)
	if out, err := exec.Command("/usr/sbin/e2fsck", "-fy", cp).CombinedOutput(); err != nil {
		// 1: errors corrected (the journal replayed); more is trouble.
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() > 1 {
			t.Fatalf("e2fsck of the image: %v\n%s", err, out)
		}
	}
	out, err := exec.Command("/usr/sbin/debugfs", "-R", "cat "+path, cp).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// overlaysLeft fails the test if sfvmm left disk overlays in dir.
func overlaysLeft(t *testing.T, dir string) {
	t.Helper()
	if left, _ := filepath.Glob(filepath.Join(dir, "sfvmm-disk-*.overlay")); len(left) != 0 {
		t.Errorf("overlays left behind: %v", left)
	}
}

// Linux mounts a virtio disk, writes a file, syncs and reads it back from
// the disk; a snapshot taken then and restored in a new sfvmm still has
// it, and what the restored guest writes changes neither the snapshot's
// copy of the disk nor the image. The image holds the file the guest
// wrote. On each transport, with its --notify (transports), which the
// statistics confirm; on virtio-pci, the disk's queue interrupts are
// MSI-X (PCI-MSI in /proc/interrupts), in the restored guest too.
func TestVirtioDisk(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { testVirtioDisk(t, tr) })
	}
}

func testVirtioDisk(t *testing.T, tr transport) {
	kernel, initrd, mount := diskGuestOn(t, tr)
	img := ext4Image(t, map[string]string{"hello.txt": "made on the host"})
	bin := sfvmmPath(t)
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	sock, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")

	p := start(t, bin, "run", tr.flag, "--notify", tr.notify, "--stats", "--api-sock", sock, "--memory", "256M", "--disk", img,
		"--kernel", kernel, "--initrd", initrd, "--cmdline", tr.cmdline)
	p.waitFor(t, "sfvmm-init: 1 cpus", 3*time.Minute)
	p.typeLine(t, mount+` && echo host=$(cat /mnt/hello.txt) && echo written-in-guest > /mnt/new.txt && sync && `+
		`echo 3 > /proc/sys/vm/drop_caches && echo readback=$(cat /mnt/new.txt)`)
	p.waitFor(t, "readback=written-in-guest", 2*time.Minute)
	if !strings.Contains(p.Output(), "host=made on the host") {
		t.Errorf("the guest did not read the host's file:\n%s", p.Output())
	}
	if tr.name == "pci" {
		// The line typed does not match what is waited for.
		p.typeLine(t, `echo msix=$(grep -c 'PCI-MSI.*virtio0-req' /proc/interrupts); echo counted=$((6*7))`)
		p.waitFor(t, "counted=42", time.Minute)
		if m := regexp.MustCompile(`msix=(\d+)\s`).FindStringSubmatch(p.Output()); m == nil || m[1] != "1" {
			t.Errorf("the disk's requests do not interrupt through MSI-X:\n%s", p.Output())
		}
	}
	out, code := run(t, 2*time.Minute, bin, "snapshot", "--api-sock", sock, "--out", snap, "--paused")
	if code != 0 {
		t.Fatalf("sfvmm snapshot: exit %d\n%s", code, out)
	}
	p.cmd.Process.Signal(unix.SIGTERM)
	p.wait(t, time.Minute)
	if want := "(virtio notifications: " + tr.notify + ")"; !strings.Contains(p.Output(), want) {
		t.Errorf("no %q in sfvmm's statistics:\n%s", want, p.Output())
	}
	if got := imageFile(t, img, "/new.txt"); got != "written-in-guest\n" {
		t.Errorf("the image holds %q as new.txt, want the guest's write", got)
	}
	imgSum, snapSum := fileSum(t, img), fileSum(t, filepath.Join(snap, "disk0.img"))

	r := start(t, bin, "restore", "--notify", tr.notify, snap)
	r.typeLine(t, `echo 3 > /proc/sys/vm/drop_caches; echo restored=$(cat /mnt/new.txt); `+
		`echo after > /mnt/after.txt && sync && umount /mnt && echo unmounted=$((6*7))`)
	r.waitFor(t, "unmounted=42", 2*time.Minute)
	if !strings.Contains(r.Output(), "restored=written-in-guest") {
		t.Errorf("the restored guest does not read its file back:\n%s", r.Output())
	}
	r.typeLine(t, "poweroff -f")
	if code := r.wait(t, time.Minute); code != 0 {
		t.Errorf("restored guest's power-off: exit %d\n%s", code, r.Output())
	}
	if fileSum(t, img) != imgSum || fileSum(t, filepath.Join(snap, "disk0.img")) != snapSum {
		t.Error("the restored guest's writes reached the image or the snapshot's disk")
	}
	overlaysLeft(t, dir)
}

// A fork with a disk, taken while direct writes stream to it: the writes
// in flight complete in the parent and in both clones; each clone reads
// the file as it was at the fork while the parent rewrites it, and writes a file of its own that neither
// its sibling nor the parent sees; the parent's rewrite goes back into the
// image when sfvmm ends, the clones' writes do not, and no overlay is
// left; --keep-clone-disks keeps each clone's disk as it saw it. On each
// transport, with its --notify (transports: requests in flight at the
// fork are under way on a vCPU's thread with exit, on a device's with
// ioeventfd): a clone's virtio-pci functions, MSI-X table included, are
// its parent's.
func TestForkDisk(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { testForkDisk(t, tr) })
	}
}

func testForkDisk(t *testing.T, tr transport) {
	kernel, initrd, mount := diskGuestOn(t, tr)
	img := ext4Image(t, map[string]string{"data.txt": "made on the host\n"})
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	const drop = "sync; echo 3 > /proc/sys/vm/drop_caches"
	// The fork comes while direct writes stream to the disk, so that
	// requests are in flight: both sides' dd must finish. 10 MiB of them:
	// with 25 MiB the mmio run took 295 s of its 300 in CI, where each
	// clone writes the rest of the stream too.
	script := mount + ` && echo v1 > /mnt/data.txt && sync || exit 1; ` +
		`(dd if=/dev/zero of=/mnt/big bs=64k count=160 oflag=direct 2>/dev/null; echo dd=$?) & ` +
		`t=$(sfctl ticket 2) && id=$(sfctl clone $t); ` +
		`if [ $id != 0 ]; then wait; sleep 3; ` + drop + `; echo mine-$id > /mnt/clone$id.txt; ` + drop + `; ` +
		`echo clone $id data=$(cat /mnt/data.txt) files=$(ls /mnt | tr '\n' ,) own=$(cat /mnt/clone$id.txt); sfctl exit; fi; ` +
		`echo v2 > /mnt/data.txt; wait; ` + drop + `; sfctl join $t && ` + drop + ` && ` +
		`echo parent data=$(cat /mnt/data.txt) files=$(ls /mnt | tr '\n' ,) && ` +
		// Forks in a row, each after a write: every clone reads the
		// round it was forked in (the disk's frozen layers fold
		// between forks rather than pile up).
		`for r in 1 2 3; do echo r$r > /mnt/round; sync; t=$(sfctl ticket 1); id=$(sfctl clone $t); ` +
		`if [ $id != 0 ]; then echo 3 > /proc/sys/vm/drop_caches; echo clone round r$r read $(cat /mnt/round); sfctl exit; fi; sfctl join $t; done; ` +
		`rm /mnt/round && umount /mnt && echo unmounted=$((6*7))`
	kept := t.TempDir()
	out, code := run(t, 5*time.Minute, sfvmmPath(t), "run", tr.flag, "--notify", tr.notify, "--memory", "256M", "--disk", img, "--keep-clone-disks", kept,
		"--kernel", kernel, "--initrd", initrd, "--cmdline", tr.cmdline+` sfvmm.run="`+script+`"`)
	if code != 0 || !strings.Contains(out, "unmounted=42") {
		t.Fatalf("exit %d, want 0 and the parent's disk unmounted:\n%s", code, out)
	}
	clones := regexp.MustCompile(`clone (\d) data=(\S+) files=(\S+) own=(\S+)`).FindAllStringSubmatch(out, -1)
	if len(clones) != 2 {
		t.Fatalf("%d clones reported, want 2:\n%s", len(clones), out)
	}
	for _, c := range clones {
		id := c[1]
		if c[2] != "v1" || c[3] != fmt.Sprintf("big,clone%s.txt,data.txt,lost+found,", id) || c[4] != "mine-"+id {
			t.Errorf("clone %s read data=%s files=%s own=%s; want v1, only its own file, mine-%s", id, c[2], c[3], c[4], id)
		}
	}
	if !strings.Contains(out, "parent data=v2 files=big,data.txt,lost+found,") {
		t.Errorf("the parent does not read its own rewrite alone:\n%s", out)
	}
	for r := 1; r <= 3; r++ {
		if want := fmt.Sprintf("clone round r%d read r%d", r, r); !strings.Contains(out, want) {
			t.Errorf("no %q: a clone of fork %d in a row did not read its round", want, r+1)
		}
	}
	if n := strings.Count(out, "dd=0"); n != 3 {
		t.Errorf("%d of the parent's and the 2 clones' direct writes across the fork ended well, want 3:\n%s", n, out)
	}
	if got := imageFile(t, img, "/data.txt"); got != "v2\n" {
		t.Errorf("the image holds %q, want the parent's rewrite v2", got)
	}
	// --keep-clone-disks: each clone left its disk as it saw it.
	for _, id := range []string{"1", "2"} {
		other := map[string]string{"1": "2", "2": "1"}[id]
		d := filepath.Join(kept, "1-"+id, "disk0.img")
		if got := imageFile(t, d, "/clone"+id+".txt"); got != "mine-"+id+"\n" {
			t.Errorf("clone %s's kept disk holds %q as its file, want mine-%s", id, got, id)
		}
		if got := imageFile(t, d, "/clone"+other+".txt"); got != "" {
			t.Errorf("clone %s's kept disk holds clone %s's file: %q", id, other, got)
		}
	}
	overlaysLeft(t, dir)
}

// A fork with a disk across hosts: the clones, each on a host of its own,
// read a 1 MiB file that the parent never read, through the memory
// server, and fetch only the blocks they read: the file's 256 and some of
// the filesystem's own, of the disk's 16384.
func TestForkDiskAcrossHosts(t *testing.T) {
	c := startCluster(t, 2, 1)
	kernel, initrd, mount := diskGuest(t)
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i*131 + i>>12)
	}
	img := ext4Image(t, map[string]string{"big.bin": string(big)})
	want := fmt.Sprintf("%x", md5.Sum(big))
	script := mount + ` && t=$(sfctl ticket 2) && id=$(sfctl clone $t); ` +
		`if [ $id != 0 ]; then echo 3 > /proc/sys/vm/drop_caches; echo clone $id read $(md5sum /mnt/big.bin | cut -c1-32); sfctl exit; fi; ` +
		`sfctl join $t && echo parent joined=$((1+1))`
	p := c.parent(t, 0, "--kernel", kernel, "--initrd", initrd, "--memory", "256M", "--disk", img, "--pages", "unicast",
		"--cmdline", linuxCmdline+` sfvmm.run="`+script+`"`)
	if code := p.wait(t, 8*time.Minute); code != 0 {
		t.Fatalf("exit status %d, want 0: %s\n%s", code, p.trouble(), p.Output())
	}
	out := p.Output()
	by := clonesByHost(out, `clone (\d+) read `+want)
	for _, h := range c.names {
		if len(by[h]) != 1 {
			t.Errorf("%s ran clones %v that read the file intact, want 1", h, by[h])
		}
	}
	fetched := regexp.MustCompile(`sfvmm clone (\d+): memtap: .*disk: (\d+) blocks fetched`).FindAllStringSubmatch(out, -1)
	if len(fetched) != 2 {
		t.Fatalf("%d clones reported disk blocks fetched, want 2:\n%s", len(fetched), out)
	}
	for _, f := range fetched {
		n, _ := strconv.Atoi(f[2])
		t.Logf("clone %s fetched %d disk blocks", f[1], n)
		if n < 256 || n > 256+256 {
			t.Errorf("clone %s fetched %d disk blocks; it read the file's 256 and a few of the filesystem's", f[1], n)
		}
	}
	if !strings.Contains(out, "parent joined=2") {
		t.Errorf("the parent did not join:\n%s", out)
	}
}
