package mcdist

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func page(b byte) []byte { return bytes.Repeat([]byte{b}, PageSize) }

func TestSealOpen(t *testing.T) {
	key := [32]byte{1, 2, 3}
	s, _ := NewSealer(key)
	o, _ := NewOpener(key)
	buf := make([]byte, BodySize)
	d := s.Seal(nil, 3, 77, page(9))
	if len(d) != Size {
		t.Fatalf("datagram of %d bytes, want %d", len(d), Size)
	}
	if bytes.Contains(d, page(9)[:64]) {
		t.Error("the page is in the datagram in the clear")
	}
	r, p, data, err := o.Open(d, buf)
	if err != nil || r != 3 || p != 77 || !bytes.Equal(data, page(9)) {
		t.Fatalf("open: region %d page %d, %v", r, p, err)
	}
	if _, _, _, err := o.Open(d, buf); !errors.Is(err, ErrReplayed) {
		t.Errorf("a replay: %v, want ErrReplayed", err)
	}
	// Another family's datagram, and a tampered one, do not open.
	// (Numbers are checked first, as IPsec does: a fresh one.)
	other, _ := NewSealer([32]byte{9})
	other.Seal(nil, 0, 1, page(1))
	if _, _, _, err := o.Open(other.Seal(nil, 0, 1, page(1)), buf); !errors.Is(err, ErrForged) {
		t.Errorf("another family's: %v, want ErrForged", err)
	}
	s.Seal(nil, 0, 4, page(2))
	d2 := s.Seal(nil, 0, 5, page(2))
	d2[40] ^= 1
	if _, _, _, err := o.Open(d2, buf); !errors.Is(err, ErrForged) {
		t.Errorf("tampered: %v, want ErrForged", err)
	}
	if _, _, _, err := o.Open(d2[:100], buf); !errors.Is(err, ErrMalformed) {
		t.Errorf("short: %v, want ErrMalformed", err)
	}
}

// The replay window against a model: every number is accepted once,
// whatever the order, unless it is WindowSize or more below the highest.
func TestReplayWindow(t *testing.T) {
	key := [32]byte{7}
	s, _ := NewSealer(key)
	var all [][]byte
	for i := 0; i < 3*WindowSize; i++ {
		all = append(all, s.Seal(nil, 0, uint64(i), page(byte(i))))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	o, _ := NewOpener(key)
	buf := make([]byte, BodySize)
	accepted := map[uint64]bool{}
	var top uint64
	for range 4 * len(all) {
		// Mostly near the front, sometimes far back, often repeated.
		i := min(len(all)-1, int(top)+rng.IntN(64)-48)
		if rng.IntN(10) == 0 {
			i = rng.IntN(len(all))
		}
		if i < 0 {
			i = 0
		}
		seq := uint64(i + 1)
		want := !accepted[seq] && (seq > top || top-seq < WindowSize)
		_, p, _, err := o.Open(all[i], buf)
		if got := err == nil; got != want {
			t.Fatalf("seq %d (top %d, seen %v): accepted %v, want %v (%v)", seq, top, accepted[seq], got, want, err)
		}
		if err == nil {
			if p != uint64(i) {
				t.Fatalf("seq %d opened page %d", seq, p)
			}
			accepted[seq] = true
			top = max(top, seq)
		}
	}
}

func FuzzOpen(f *testing.F) {
	key := [32]byte{5}
	s, _ := NewSealer(key)
	f.Add(s.Seal(nil, 1, 2, page(3)))
	f.Add([]byte("SFMD"))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, _ := NewOpener(key)
		buf := make([]byte, BodySize)
		if _, _, data, err := o.Open(b, buf); err == nil && len(data) != PageSize {
			t.Fatalf("opened a page of %d bytes", len(data))
		}
	})
}

// Peek tells a replay, and the claimed page, before any decryption.
func TestPeek(t *testing.T) {
	key := [32]byte{4}
	s, _ := NewSealer(key)
	o, _ := NewOpener(key)
	d := s.Seal(nil, 2, 99, page(1))
	if r, p, err := o.Peek(d); err != nil || r != 2 || p != 99 {
		t.Fatalf("peek: region %d page %d, %v", r, p, err)
	}
	if _, _, _, err := o.Open(d, make([]byte, BodySize)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := o.Peek(d); !errors.Is(err, ErrReplayed) {
		t.Errorf("peek at a replay: %v, want ErrReplayed", err)
	}
}
