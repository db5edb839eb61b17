// Package localfs tells whether a file lives on local storage: storage
// whose reads and writes end without a server on the other side of a
// network. sfvmm makes some calls on such files keeping its Go P (see
// disk.Disk.KeepP), which is only safe where no lost server can block
// them for good. It knows filesystems and block devices, not files'
// contents.
package localfs

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Is says whether f is on local storage: a filesystem of a local kind
// (ext4, xfs, btrfs, f2fs, bcachefs on a local block device; tmpfs;
// overlayfs), as fstatfs and sysfs tell. Any other (NFS, SMB, 9p, FUSE,
// ...), one on a network or loop block device, or one it cannot tell is
// not.
func Is(f *os.File) bool {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		return false
	}
	switch uint32(fs.Type) {
	case unix.TMPFS_MAGIC, unix.OVERLAYFS_SUPER_MAGIC:
		return true
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC, unix.F2FS_SUPER_MAGIC, unix.BCACHEFS_SUPER_MAGIC:
	default:
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	dev, err := filepath.EvalSymlinks(filepath.Join("/sys/dev/block", devName(st.Dev)))
	if err != nil {
		// btrfs and bcachefs report a device number of their own,
		// which names no block device; they are as local as the
		// devices they were made on, which this does not check.
		return uint32(fs.Type) == unix.BTRFS_SUPER_MAGIC || uint32(fs.Type) == unix.BCACHEFS_SUPER_MAGIC
	}
	return localDevice(dev, slaves(dev))
}

// devName is a device number as /sys/dev/block names it: MAJOR:MINOR.
func devName(dev uint64) string {
	return strconv.FormatUint(uint64(unix.Major(dev)), 10) + ":" + strconv.FormatUint(uint64(unix.Minor(dev)), 10)
}

// slaves are the sysfs paths of the devices a device-mapper or md device
// at dev is made of, and theirs, down to the disks.
func slaves(dev string) []string {
	var out []string
	names, _ := filepath.Glob(filepath.Join(dev, "slaves", "*"))
	for _, n := range names {
		p, err := filepath.EvalSymlinks(n)
		if err != nil {
			continue
		}
		out = append(out, p)
		out = append(out, slaves(p)...)
	}
	return out
}

// remoteDevices are the kernel names of block devices whose data is
// elsewhere: network block devices (nbd, Ceph's rbd, drbd) and loop
// devices, whose file may be on any filesystem.
var remoteDevices = []string{"nbd", "rbd", "drbd", "loop"}

// localDevice says whether the block device at sysfs path dev (resolved:
// /sys/devices/.../block/sda/sda1), made of the devices at the sysfs
// paths under (a device mapper's or md's), is local. A disk under an
// iSCSI session (.../session3/...) or a Fibre Channel remote port
// (.../rport-...) is not.
func localDevice(dev string, under []string) bool {
	for _, p := range append([]string{dev}, under...) {
		for _, part := range strings.Split(p, "/") {
			if strings.HasPrefix(part, "session") || strings.HasPrefix(part, "rport-") {
				return false
			}
			for _, r := range remoteDevices {
				if strings.HasPrefix(part, r) && isDigits(strings.TrimPrefix(part, r)) {
					return false
				}
			}
		}
	}
	return true
}

// isDigits says whether s is a device number with its partition suffix,
// if any (0, 0p1): so that "nbd0" is a network block device and a
// directory called "nbdx" is not.
func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && c != 'p' {
			return false
		}
	}
	return s[0] != 'p'
}
