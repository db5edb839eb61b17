// Package cpio reads and writes cpio archives in the "newc" format (SVR4
// portable ASCII, magic 070701, no checksum): the format the Linux kernel
// unpacks as an initramfs.
//
// It is meant for building small guest initramfs images and inspecting them
// in tests. It does not handle hard links, the "crc" variant (070702) or the
// old binary and odc formats.
package cpio

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// File type bits of Header.Mode, as in the st_mode of stat(2).
const (
	TypeMask    = 0o170000
	TypeDir     = 0o040000
	TypeReg     = 0o100000
	TypeSymlink = 0o120000
	TypeChar    = 0o020000
	TypeBlock   = 0o060000
	TypeFIFO    = 0o010000
)

const (
	magic      = "070701"
	headerSize = 110 // magic + 13 eight-digit hex fields
	trailer    = "TRAILER!!!"
)

// Header describes one archive entry.
type Header struct {
	Name  string // path inside the archive, without a leading "/"
	Mode  uint32 // file type bits | permission bits
	UID   uint32
	GID   uint32
	NLink uint32 // 0 means 1 (2 for a directory)
	MTime int64  // seconds since the epoch
	Size  int64  // bytes of data that follow; for a symlink, len(target)
	// RDevMajor and RDevMinor are the device number of a device node.
	RDevMajor, RDevMinor uint32
}

// Writer writes a newc archive. Call WriteHeader for each entry, then Write
// exactly Size bytes of its data, and Close at the end to add the trailer.
// Inode numbers are assigned in order from 1, so equal input gives equal
// bytes.
type Writer struct {
	w       io.Writer
	ino     uint32
	left    int64 // data bytes still owed for the current entry
	pad     int   // padding after the current entry's data
	written int64 // bytes written so far, for padding
	closed  bool
}

// NewWriter returns a Writer that writes to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// ErrWriteTooLong is returned when Write is given more than Header.Size bytes.
var ErrWriteTooLong = errors.New("cpio: write too long")

func (w *Writer) write(p []byte) error {
	n, err := w.w.Write(p)
	w.written += int64(n)
	return err
}

func pad4(n int64) int { return int((4 - n%4) % 4) }

// WriteHeader finishes the previous entry and starts a new one.
func (w *Writer) WriteHeader(h *Header) error {
	if w.closed {
		return errors.New("cpio: write after close")
	}
	if err := w.finish(); err != nil {
		return err
	}
	name := strings.TrimLeft(h.Name, "/")
	if name == "" || strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("cpio: bad entry name %q", h.Name)
	}
	if h.Size < 0 || h.Size > 0xffffffff {
		return fmt.Errorf("cpio: %s: size %d out of range", name, h.Size)
	}
	if h.Mode&TypeMask == 0 {
		return fmt.Errorf("cpio: %s: mode %#o has no file type", name, h.Mode)
	}
	nlink := h.NLink
	if nlink == 0 {
		nlink = 1
		if h.Mode&TypeMask == TypeDir {
			nlink = 2
		}
	}
	w.ino++
	return w.header(w.ino, h.Mode, h.UID, h.GID, nlink, h.MTime, h.Size, h.RDevMajor, h.RDevMinor, name)
}

func (w *Writer) header(ino, mode, uid, gid, nlink uint32, mtime, size int64, rmaj, rmin uint32, name string) error {
	var b strings.Builder
	b.WriteString(magic)
	for _, v := range []uint32{ino, mode, uid, gid, nlink, uint32(mtime), uint32(size),
		0, 0, rmaj, rmin, uint32(len(name) + 1), 0} {
		fmt.Fprintf(&b, "%08x", v)
	}
	b.WriteString(name)
	b.WriteByte(0)
	b.WriteString(strings.Repeat("\x00", pad4(int64(headerSize+len(name)+1))))
	if err := w.write([]byte(b.String())); err != nil {
		return fmt.Errorf("cpio: write header of %s: %w", name, err)
	}
	w.left = size
	w.pad = pad4(size)
	return nil
}

// Write writes data of the current entry.
func (w *Writer) Write(p []byte) (int, error) {
	if int64(len(p)) > w.left {
		return 0, ErrWriteTooLong
	}
	n, err := w.w.Write(p)
	w.written += int64(n)
	w.left -= int64(n)
	return n, err
}

func (w *Writer) finish() error {
	if w.left != 0 {
		return fmt.Errorf("cpio: entry is missing %d bytes of data", w.left)
	}
	if w.pad > 0 {
		if err := w.write(make([]byte, w.pad)); err != nil {
			return err
		}
		w.pad = 0
	}
	return nil
}

// Close finishes the last entry and writes the trailer. It does not close
// the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	if err := w.finish(); err != nil {
		return err
	}
	w.closed = true
	if err := w.header(0, 0, 0, 0, 1, 0, 0, 0, 0, trailer); err != nil {
		return err
	}
	// The kernel accepts any length; pad to 512 bytes as cpio(1) does.
	if rem := w.written % 512; rem != 0 {
		return w.write(make([]byte, 512-rem))
	}
	return nil
}

// Dir adds a directory.
func (w *Writer) Dir(name string, perm uint32) error {
	return w.WriteHeader(&Header{Name: name, Mode: TypeDir | perm&0o7777})
}

// File adds a regular file holding data.
func (w *Writer) File(name string, perm uint32, data []byte) error {
	if err := w.WriteHeader(&Header{Name: name, Mode: TypeReg | perm&0o7777, Size: int64(len(data))}); err != nil {
		return err
	}
	_, err := w.Write(data)
	return err
}

// Symlink adds a symbolic link name -> target.
func (w *Writer) Symlink(name, target string) error {
	if err := w.WriteHeader(&Header{Name: name, Mode: TypeSymlink | 0o777, Size: int64(len(target))}); err != nil {
		return err
	}
	_, err := w.Write([]byte(target))
	return err
}

// CharDev adds a character device node.
func (w *Writer) CharDev(name string, perm, major, minor uint32) error {
	return w.WriteHeader(&Header{Name: name, Mode: TypeChar | perm&0o7777, RDevMajor: major, RDevMinor: minor})
}

// Reader reads a newc archive entry by entry.
type Reader struct {
	r    io.Reader
	left int64 // unread data of the current entry
	pad  int
	done bool
}

// NewReader returns a Reader that reads from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Next skips to the next entry and returns its header; io.EOF after the
// trailer.
func (r *Reader) Next() (*Header, error) {
	if r.done {
		return nil, io.EOF
	}
	if _, err := io.CopyN(io.Discard, r.r, r.left+int64(r.pad)); err != nil {
		return nil, fmt.Errorf("cpio: skip data: %w", noEOF(err))
	}
	r.left, r.pad = 0, 0
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r.r, hdr[:]); err != nil {
		return nil, fmt.Errorf("cpio: read header: %w", noEOF(err))
	}
	if string(hdr[:6]) != magic {
		return nil, fmt.Errorf("cpio: bad magic %q", hdr[:6])
	}
	var f [13]uint32
	for i := range f {
		v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
		if err != nil {
			return nil, fmt.Errorf("cpio: bad header field %d: %w", i, err)
		}
		f[i] = uint32(v)
	}
	nameSize := int64(f[11])
	if nameSize == 0 || nameSize > 4096 {
		return nil, fmt.Errorf("cpio: bad name size %d", nameSize)
	}
	name := make([]byte, nameSize+int64(pad4(headerSize+nameSize)))
	if _, err := io.ReadFull(r.r, name); err != nil {
		return nil, fmt.Errorf("cpio: read name: %w", noEOF(err))
	}
	if name[nameSize-1] != 0 {
		return nil, errors.New("cpio: name is not NUL-terminated")
	}
	h := &Header{
		Name: string(name[:nameSize-1]), Mode: f[1], UID: f[2], GID: f[3], NLink: f[4],
		MTime: int64(f[5]), Size: int64(f[6]), RDevMajor: f[9], RDevMinor: f[10],
	}
	if h.Name == trailer {
		r.done = true
		return nil, io.EOF
	}
	r.left, r.pad = h.Size, pad4(h.Size)
	return h, nil
}

// Read reads data of the current entry.
func (r *Reader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.r.Read(p)
	r.left -= int64(n)
	if err == io.EOF && r.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
