// Package diskimage makes disk images for guests from a folder of files:
// ext4, through Debian's e2fsprogs (mkfs.ext4 -d), which needs neither
// root nor a loop device.
package diskimage

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// mkfs finds mkfs.ext4, which Debian keeps in /usr/sbin, outside a
// user's PATH.
func mkfs() (string, error) {
	if p, err := exec.LookPath("mkfs.ext4"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("mkfs.ext4 not found (Debian: apt-get install e2fsprogs)")
}

// Ext4 writes an ext4 image of size bytes at out holding the files of
// dir (nil: none), owned by root. Its blocks are 4 KiB, the unit sfvmm's
// disk overlays copy, so that a guest's block write never copies half a
// block up. A file already at out is replaced.
func Ext4(out, dir string, size int64) error {
	if size < 1<<20 || size%4096 != 0 {
		return fmt.Errorf("ext4 image of %d bytes: want whole 4 KiB blocks, at least 1 MiB", size)
	}
	bin, err := mkfs()
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	args := []string{"-q", "-F", "-b", "4096", "-E", "root_owner=0:0"}
	if dir != "" {
		args = append(args, "-d", dir)
	}
	cmd := exec.Command(bin, append(args, out)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(out)
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", out, err, strings.TrimSpace(string(b)))
	}
	return nil
}
