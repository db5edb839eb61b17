package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// initramfsModules are loaded by the guest's init before anything else:
// virtio PCI and 9p to reach the host's files, then KVM. Their
// dependencies (virtio_ring, netfs, fscache, irqbypass, ccp, ...) come from
// modules.dep.
var initramfsModules = []string{"virtio_pci", "9pnet_virtio", "9p", "kvm_amd"}

// initScript is the guest's /init (busybox sh, PID 1). It loads the
// modules, mounts the host's root read-only and the checkout read-write
// over 9p, runs the per-run script in a chroot of that tree, stores its
// exit status next to it and powers off. The per-run parts (where the run
// directory and the checkout are) come on the kernel command line, so the
// initramfs is built once and cached.
const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
die() {
	echo "kvmbox-init: $*"
	poweroff -f
	sleep 10
}
# With kvmbox -v, say how far the boot got, and when (uptime in seconds).
step() {
	[ -z "$DEBUG" ] || echo "kvmbox-init: $(cut -d' ' -f1 /proc/uptime) s: $*"
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	kvmbox.run=*) RUN="${arg#*=}" ;;
	kvmbox.checkout=*) CHECKOUT="${arg#*=}" ;;
	kvmbox.debug) DEBUG=1 ;;
	esac
done
[ -n "$RUN" ] && [ -n "$CHECKOUT" ] || die "kvmbox.run= or kvmbox.checkout= missing from the kernel command line"
step "init started"
while read -r ko args; do
	insmod "/lib/modules/$ko" $args || die "insmod $ko $args failed"
done </lib/modules/order
[ -c /dev/kvm ] || echo "kvmbox-init: warning: kvm_amd loaded but there is no /dev/kvm"
step "modules loaded"

R=/newroot
o=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$o,ro,cache=loose" hostroot $R || die "mounting the host root over 9p failed"
mount -t proc proc $R/proc || die "mount /proc"
mount -t sysfs sysfs $R/sys || die "mount /sys"
mount -t devtmpfs devtmpfs $R/dev || die "mount /dev"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
mount -t tmpfs -o mode=0755 tmpfs $R/run || die "mount /run"
mount -t tmpfs -o mode=1777 tmpfs $R/tmp || die "mount /tmp"
mount -t tmpfs -o mode=1777 tmpfs $R/var/tmp 2>/dev/null
# After the tmpfs mounts, so that a checkout under /tmp stays visible.
mkdir -p "$R$CHECKOUT"
mount -t 9p -o "$o,cache=mmap" checkout "$R$CHECKOUT" || die "mounting the checkout $CHECKOUT over 9p failed"
step "file systems mounted"
hostname kvmbox
ip link set lo up
if [ -f "$R$RUN/modules" ]; then
	while read -r ko args; do
		insmod "$R$ko" $args || die "insmod $ko $args failed"
	done <"$R$RUN/modules"
fi
# Quiet boot (loglevel=4: errors only), but from here on warnings reach
# the console too, where kvmbox shows them: KVM warns at that level.
echo 5 >/proc/sys/kernel/printk
step "running $RUN/run.sh"
chroot $R /bin/sh "$RUN/run.sh"
echo $? >"$R$RUN/rc"
step "CMD exited, powering off"
poweroff -f
sleep 10
`

// buildInitramfs returns the path of the cached initramfs for kernel k,
// building it if its inputs (busybox, the modules and their parameters
// from --module-param,
// the init script) changed. It is left uncompressed: the kernel unpacks
// that fastest, and it is only a few MB.
func buildInitramfs(cache string, k *kernel, moduleParams map[string]string) (string, error) {
	busybox, err := os.ReadFile(toolBusybox.path)
	if err != nil {
		return "", err
	}
	if err := checkStatic(toolBusybox.path); err != nil {
		return "", err
	}
	mods, err := k.modulePaths(initramfsModules)
	if err != nil {
		return "", fmt.Errorf("resolve initramfs modules: %w", err)
	}

	h := sha256.New()
	fmt.Fprintf(h, "kvmbox initramfs v1\x00%s\x00%s\x00", k.Package, initScript)
	h.Write(busybox)
	var order strings.Builder
	for _, m := range mods {
		line := strings.TrimSpace(filepath.Base(m) + " " + moduleParams[modName(m)])
		order.WriteString(line + "\n")
		st, err := os.Stat(m)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00", m, st.Size(), st.ModTime().UnixNano())
	}
	h.Write([]byte(order.String()))
	sum := hex.EncodeToString(h.Sum(nil))[:16]
	out := filepath.Join(cache, "initramfs-"+sum+".cpio")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}

	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	for _, d := range []string{"bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"} {
		w.Dir(d, 0o755)
	}
	// The kernel opens /dev/console for init before init can mount
	// devtmpfs; without the node init would run with no stdio.
	w.CharDev("dev/console", 0o600, 5, 1)
	w.File("bin/busybox", 0o755, busybox)
	w.Symlink("bin/sh", "busybox")
	w.File("init", 0o755, []byte(initScript))
	for _, m := range mods {
		data, err := os.ReadFile(m)
		if err != nil {
			return "", err
		}
		w.File("lib/modules/"+filepath.Base(m), 0o644, data)
	}
	w.File("lib/modules/order", 0o644, []byte(order.String()))
	if err := w.Close(); err != nil {
		return "", err
	}
	old, _ := filepath.Glob(filepath.Join(cache, "initramfs-*.cpio"))
	if err := writeFileAtomic(out, buf.Bytes()); err != nil {
		return "", err
	}
	for _, o := range old {
		os.Remove(o)
	}
	return out, nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
