package main

import (
	"fmt"
	"io"
)

// cpioWriter writes a "newc" (SVR4, no checksum) cpio archive, the format
// the Linux kernel unpacks as an initramfs. It exists so that building the
// initramfs needs neither root nor the cpio tool: device nodes such as
// /dev/console are just headers. Every entry gets mtime 0 and uid/gid 0,
// so the same inputs give the same bytes.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error // first write error; later calls do nothing
}

const (
	cpioModeDir     = 0o040000
	cpioModeFile    = 0o100000
	cpioModeSymlink = 0o120000
	cpioModeCharDev = 0o020000
)

func newCPIOWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: w} }

// Dir adds a directory; perm holds the permission bits only.
func (c *cpioWriter) Dir(name string, perm uint32) {
	c.entry(name, cpioModeDir|perm, 2, 0, 0, nil)
}

// File adds a regular file with the given contents.
func (c *cpioWriter) File(name string, perm uint32, data []byte) {
	c.entry(name, cpioModeFile|perm, 1, 0, 0, data)
}

// Symlink adds a symbolic link name -> target.
func (c *cpioWriter) Symlink(name, target string) {
	c.entry(name, cpioModeSymlink|0o777, 1, 0, 0, []byte(target))
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) {
	c.entry(name, cpioModeCharDev|perm, 1, major, minor, nil)
}

// Close writes the trailer entry and reports the first error seen.
func (c *cpioWriter) Close() error {
	c.entry("TRAILER!!!", 0, 1, 0, 0, nil)
	return c.err
}

func (c *cpioWriter) entry(name string, mode, nlink, rmajor, rminor uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	ino := c.ino
	if name == "TRAILER!!!" {
		ino = 0
	}
	// Fields in order: ino mode uid gid nlink mtime filesize devmajor
	// devminor rdevmajor rdevminor namesize check.
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+4+len(data)+3)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = pad4(buf)
	buf = append(buf, data...)
	buf = pad4(buf)
	_, c.err = c.w.Write(buf)
}

// pad4 pads b with NULs to a multiple of four bytes. The header is 110
// bytes, and each entry starts 4-aligned, so aligning the running buffer of
// one entry aligns the archive.
func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
