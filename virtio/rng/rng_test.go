package rng

import (
	"bytes"
	"errors"
	"testing"

	"github.com/sfvmm/sfvmm/virtio"
)

// A request's writable buffers are filled, up to maxRequest bytes in
// all; a readable part makes it malformed.
func TestHandle(t *testing.T) {
	a, b := make([]byte, 16), make([]byte, 48)
	n, err := Device{}.Handle(0, virtio.Chain{Writable: [][]byte{a, b}})
	if err != nil || n != 64 {
		t.Fatalf("Handle: %d bytes, %v; want 64", n, err)
	}
	if bytes.Equal(a, make([]byte, 16)) || bytes.Equal(b, make([]byte, 48)) {
		t.Error("a buffer left zero")
	}
	big := [][]byte{make([]byte, maxRequest-8), make([]byte, 64)}
	if n, err := (Device{}).Handle(0, virtio.Chain{Writable: big}); err != nil || n != maxRequest {
		t.Errorf("Handle of %d bytes: %d, %v; want the first %d", maxRequest+56, n, err, maxRequest)
	}
	if !bytes.Equal(big[1][8:], make([]byte, 56)) {
		t.Error("bytes past maxRequest written")
	}
	if _, err := (Device{}).Handle(0, virtio.Chain{Readable: [][]byte{{0}}, Writable: [][]byte{a}}); !errors.Is(err, virtio.ErrMalformed) {
		t.Errorf("a request with a readable buffer: %v, want malformed", err)
	}
}

// FuzzHandle: any chain is filled, all of its writable bytes up to
// maxRequest, or refused as malformed; never a panic.
func FuzzHandle(f *testing.F) {
	f.Add(uint8(0), []byte{16, 0, 48})
	f.Add(uint8(1), []byte{4})
	f.Add(uint8(0), []byte{})
	f.Fuzz(func(t *testing.T, readable uint8, sizes []byte) {
		var c virtio.Chain
		for range readable % 3 {
			c.Readable = append(c.Readable, make([]byte, 1))
		}
		total := 0
		// Buffers of up to 255 bytes: TestHandle covers the cut at
		// maxRequest, which a fuzzer filling megabytes would spend its
		// time on.
		for _, s := range sizes {
			c.Writable = append(c.Writable, make([]byte, s))
			total += int(s)
		}
		n, err := Device{}.Handle(0, c)
		switch {
		case len(c.Readable) != 0:
			if !errors.Is(err, virtio.ErrMalformed) {
				t.Fatalf("readable part: %v, want malformed", err)
			}
		case err != nil:
			t.Fatal(err)
		case int(n) != min(total, maxRequest):
			t.Fatalf("%d bytes written of %d offered, want %d", n, total, min(total, maxRequest))
		}
	})
}
