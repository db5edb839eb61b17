package boot

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"

	"github.com/xi2/xz"
)

// Setup header fields that locate a bzImage's compressed kernel (boot
// protocol 2.08+), relative to the end of the real-mode setup code.
const (
	hdrPayloadOffset = 0x248
	hdrPayloadLength = 0x24c
	payloadVersion   = 0x0208
)

// ErrPayloadFormat says a bzImage's kernel is compressed in a format Unpack
// cannot read (Linux also offers bzip2, lzma, lzo, lz4 and zstd); such an
// image still boots as it is, decompressing itself.
var ErrPayloadFormat = errors.New("kernel payload compression not supported")

// Payload locates the compressed kernel inside a bzImage of size bytes
// whose first bytes (at least the setup header) are head: its offset and
// length in the file, without the 4-byte decompressed size that ends it.
func Payload(head []byte, size int64) (off, n int64, err error) {
	if len(head) < hdrMinLen || !isBzImage(head) {
		return 0, 0, errors.New("not a bzImage (no HdrS setup header)")
	}
	if v := le.Uint16(head[hdrVersion:]); v < payloadVersion {
		return 0, 0, fmt.Errorf("boot protocol %#x is older than 2.08: no payload fields", v)
	}
	setupSects := int64(head[hdrSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	off = (setupSects+1)*512 + int64(le.Uint32(head[hdrPayloadOffset:]))
	n = int64(le.Uint32(head[hdrPayloadLength:]))
	if n < 4 || off+n > size {
		return 0, 0, fmt.Errorf("payload [%d, %d) outside the %d-byte image", off, off+n, size)
	}
	return off, n - 4, nil
}

// Unpack writes the ELF vmlinux that the size-byte bzImage in r carries
// compressed to w. Payloads compressed with xz (Debian's kernels; with the
// x86 BCJ filter) and gzip are read; other formats give ErrPayloadFormat.
// It returns the vmlinux's size.
func Unpack(r io.ReaderAt, size int64, w io.Writer) (int64, error) {
	head := make([]byte, min(size, hdrMinLen))
	if _, err := r.ReadAt(head, 0); err != nil {
		return 0, fmt.Errorf("read the setup header: %w", err)
	}
	off, n, err := Payload(head, size)
	if err != nil {
		return 0, err
	}
	br := bufio.NewReaderSize(io.NewSectionReader(r, off, n), 64<<10)
	magic, _ := br.Peek(6)
	var dec io.Reader
	switch {
	case bytes.HasPrefix(magic, []byte("\xfd7zXZ\x00")):
		x, err := xz.NewReader(br, xzDictMax)
		if err != nil {
			return 0, fmt.Errorf("xz payload: %w", err)
		}
		x.Multistream(false)
		dec = x
	case bytes.HasPrefix(magic, []byte("\x1f\x8b")):
		g, err := gzip.NewReader(br)
		if err != nil {
			return 0, fmt.Errorf("gzip payload: %w", err)
		}
		g.Multistream(false)
		dec = g
	default:
		return 0, fmt.Errorf("%w: magic % x", ErrPayloadFormat, magic)
	}
	// A vmlinux is an ELF file; anything else is refused before it is
	// written out at length.
	out := bufio.NewReaderSize(io.LimitReader(dec, maxVmlinux+1), 64<<10)
	if m, err := out.Peek(4); err != nil || !bytes.Equal(m, []byte("\x7fELF")) {
		return 0, fmt.Errorf("decompressed payload is not an ELF vmlinux (starts % x): %v", m, err)
	}
	written, err := io.Copy(w, out)
	if err != nil {
		return written, fmt.Errorf("decompress payload: %w", err)
	}
	if written > maxVmlinux {
		return written, fmt.Errorf("decompressed payload exceeds %d MiB", maxVmlinux>>20)
	}
	if want := int64(le.Uint32(sizeTrailer(r, off+n))); want != 0 && want != written {
		return written, fmt.Errorf("decompressed payload is %d bytes, the image says %d", written, want)
	}
	return written, nil
}

// xzDictMax is the largest xz dictionary Unpack allocates: Linux's
// scripts/xz_wrap.sh compresses with a 32 MiB one, and a payload asking
// for more is refused rather than obeyed.
var xzDictMax uint32 = 32 << 20

// maxVmlinux bounds an unpacked kernel (Debian's is about 64 MiB): a
// hostile image cannot fill the cache directory.
const maxVmlinux = 256 << 20

// sizeTrailer reads the 4-byte decompressed size after the payload, or
// zeroes if it cannot be read.
func sizeTrailer(r io.ReaderAt, at int64) []byte {
	b := make([]byte, 4)
	if _, err := r.ReadAt(b, at); err != nil {
		return make([]byte, 4)
	}
	return b
}
