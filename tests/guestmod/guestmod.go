// Package guestmod gives the Linux test guests of the tests and
// benchmarks modules of their own kernel: Debian's kernel has the virtio
// drivers, ext4 and vsock as modules. They travel in a second archive
// appended to sfvmm's test initramfs (Linux unpacks concatenated
// archives), as /m/NAME.ko, which the guest loads with insmod.
package guestmod

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sfvmm/sfvmm/kernels/cpio"
)

// Dir is where the modules of kernel are: kvmbox unpacks the kernel's
// package with them beside it, KERNELDIR/../lib/modules/RELEASE.
func Dir(kernel string) string {
	release := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	return filepath.Join(filepath.Dir(filepath.Dir(kernel)), "lib", "modules", release)
}

// File is another file the appended archive holds.
type File struct {
	Name string // path in the guest, without the leading /
	Mode uint32
	Data []byte
}

// Append writes to out a copy of initrd with an archive appended that
// holds kernel's modules mods (paths under its kernel/ directory, without
// .ko) as /m/NAME.ko, and files.
func Append(initrd, kernel, out string, mods []string, files ...File) error {
	base, err := os.ReadFile(initrd)
	if err != nil {
		return err
	}
	buf := bytes.NewBuffer(base)
	w := cpio.NewWriter(buf)
	if err := w.Dir("m", 0o755); err != nil {
		return err
	}
	dir := filepath.Join(Dir(kernel), "kernel")
	for _, m := range mods {
		b, err := os.ReadFile(filepath.Join(dir, m+".ko"))
		if err != nil {
			return fmt.Errorf("module %s of the guest kernel: %w", m, err)
		}
		if err := w.File("m/"+filepath.Base(m)+".ko", 0o644, b); err != nil {
			return err
		}
	}
	for _, f := range files {
		if err := w.File(f.Name, f.Mode, f.Data); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

// Insmods is the guest's shell command that loads mods from /m, in order.
func Insmods(mods ...string) string {
	var cmds []string
	for _, m := range mods {
		cmds = append(cmds, "insmod /m/"+filepath.Base(m)+".ko")
	}
	return strings.Join(cmds, " && ")
}
