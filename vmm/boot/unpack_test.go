package boot

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"strings"
	"testing"
)

// fakeVmlinux is the uncompressed kernel in testdata/vmlinux.xz: an ELF
// magic, then x86-like code full of CALL rel32 (0xe8) and JMP rel32 (0xe9)
// instructions, which the BCJ filter that Linux's xz payloads use rewrites.
// The file was made as scripts/xz_wrap.sh compresses Linux:
//
//	xz --format=xz --check=crc32 --x86 --lzma2=dict=1MiB
func fakeVmlinux() []byte {
	b := []byte("\x7fELF\x02\x01\x01")
	for i := 0; len(b) < 96<<10; i++ {
		b = append(b, 0x48, 0x89, 0xe5, byte(0xe8+i%2), byte(i), byte(i>>8), 0, 0, 0x90, byte(i*13))
	}
	return b
}

// bzWithPayload wraps a compressed payload in a synthetic bzImage, with the
// decompressed size after it as Linux's build puts it.
func bzWithPayload(payload []byte, size uint32) []byte {
	o := defaultBz()
	o.kernelLen = 0x200 + len(payload) + 4
	img := makeBzImage(o)
	setup := (int(o.setupSects) + 1) * 512
	le.PutUint32(img[hdrPayloadOffset:], 0x200)
	le.PutUint32(img[hdrPayloadLength:], uint32(len(payload)+4))
	copy(img[setup+0x200:], payload)
	le.PutUint32(img[setup+0x200+len(payload):], size)
	return img
}

func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func unpack(img []byte) ([]byte, error) {
	var out bytes.Buffer
	n, err := Unpack(bytes.NewReader(img), int64(len(img)), &out)
	if err == nil && n != int64(out.Len()) {
		return nil, errors.New("Unpack's count differs from what it wrote")
	}
	return out.Bytes(), err
}

func TestUnpack(t *testing.T) {
	want := fakeVmlinux()
	xzPayload, err := os.ReadFile("testdata/vmlinux.xz")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		payload []byte
	}{
		{"xz with the x86 BCJ filter", xzPayload},
		{"gzip", gzipped(want)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := unpack(bzWithPayload(tc.payload, uint32(len(want))))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("unpacked %d bytes differ from the %d packed", len(got), len(want))
			}
		})
	}
}

// Payload finds the payload after the setup sectors and payload_offset,
// without the size that ends it.
func TestPayload(t *testing.T) {
	img := make([]byte, 8192)
	img[hdrSetupSects] = 3 // the payload area starts at (3+1)*512
	copy(img[hdrMagic:], "HdrS")
	le.PutUint16(img[hdrVersion:], 0x20f)
	le.PutUint32(img[hdrPayloadOffset:], 100)
	le.PutUint32(img[hdrPayloadLength:], 10)
	off, n, err := Payload(img, int64(len(img)))
	if err != nil || off != 2048+100 || n != 6 {
		t.Fatalf("Payload = %d, %d, %v; want 2148, 6", off, n, err)
	}
}

func TestUnpackRefuses(t *testing.T) {
	want := fakeVmlinux()
	xzPayload, err := os.ReadFile("testdata/vmlinux.xz")
	if err != nil {
		t.Fatal(err)
	}
	corrupt := bytes.Clone(xzPayload)
	corrupt[len(corrupt)/2] ^= 0x55
	outside := bzWithPayload(gzipped(want), uint32(len(want)))
	le.PutUint32(outside[hdrPayloadLength:], 1<<30)
	old := bzWithPayload(gzipped(want), uint32(len(want)))
	le.PutUint16(old[hdrVersion:], 0x0206)
	for _, tc := range []struct {
		name, want string
		img        []byte
	}{
		{"zstd payload", "compression not supported", bzWithPayload([]byte("\x28\xb5\x2f\xfd rest"), 10)},
		{"corrupt xz", "xz", bzWithPayload(corrupt, uint32(len(want)))},
		{"truncated xz", "xz", bzWithPayload(xzPayload[:len(xzPayload)/2], uint32(len(want)))},
		{"not an ELF file", "not an ELF vmlinux", bzWithPayload(gzipped([]byte("hello, world")), 12)},
		{"wrong size trailer", "the image says", bzWithPayload(gzipped(want), 1234)},
		{"payload outside the image", "outside the", outside},
		{"boot protocol 2.06", "older than 2.08", old},
		{"not a bzImage", "not a bzImage", make([]byte, 4096)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := unpack(tc.img)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := unpack(bzWithPayload([]byte("\x28\xb5\x2f\xfd rest"), 10)); !errors.Is(err, ErrPayloadFormat) {
		t.Errorf("a zstd payload gives %v, want ErrPayloadFormat", err)
	}
}

// FuzzUnpack feeds Unpack arbitrary payloads in a well-formed header: it
// returns an error or an ELF file, and never panics or runs away. The
// dictionary limit is the seed's 1 MiB rather than Linux's 32 MiB, whose
// allocation in every run would slow the fuzzer a hundredfold.
func FuzzUnpack(f *testing.F) {
	defer func(old uint32) { xzDictMax = old }(xzDictMax)
	xzDictMax = 1 << 20
	xzPayload, err := os.ReadFile("testdata/vmlinux.xz")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(xzPayload)
	f.Add(gzipped(fakeVmlinux()))
	f.Add([]byte("\xfd7zXZ\x00\x00\x04"))
	f.Fuzz(func(t *testing.T, payload []byte) {
		got, err := unpack(bzWithPayload(payload, 0))
		if err == nil && !bytes.HasPrefix(got, []byte("\x7fELF")) {
			t.Fatalf("Unpack accepted a payload that is no ELF file")
		}
	})
}
