// Package mcdist is the datagram side of memtap's multicast page
// distribution (SnowFlock's mcdist): the memory server sends the reply to
// a clone's request for a page to the whole family's multicast group, and
// every clone that lacks the page installs it.
//
// A datagram carries one page:
//
//	magic "SFMD" | sequence number (8) | region (4) | page (8) | AEAD(4 KiB)
//
// sealed with AES-256-GCM under a key derived from the family key, the
// nonce being the sequence number, with the header before it as
// additional data. The header is in the clear so that a clone that has
// the page already drops the datagram without decrypting it: every clone
// receives every page any sibling asked for, and decryption is most of a
// datagram's cost. The server numbers its datagrams from 1 and never
// reuses a number under one key (one sender per family key: the memory
// server of one fork image). A receiver drops, and counts, a datagram that
// does not open (another family's, or forged) and one whose number it has
// seen (replayed), keeping a window of the last WindowSize numbers as
// IPsec does.
package mcdist

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Sizes.
const (
	PageSize   = 4096
	headerSize = 4 + 8 + 4 + 8
	bodySize   = PageSize
	tagSize    = 16
	// Size is a datagram's size.
	Size = headerSize + bodySize + tagSize
	// WindowSize is how far back a receiver remembers sequence numbers.
	WindowSize = 4096
	magic      = "SFMD"
)

// ErrForged: a datagram that does not open under the family's key.
var ErrForged = errors.New("mcdist datagram does not authenticate (another family's, or forged)")

// ErrReplayed: a datagram whose sequence number was seen, or is too old
// to tell.
var ErrReplayed = errors.New("mcdist datagram replayed")

// ErrMalformed: not an mcdist datagram at all.
var ErrMalformed = errors.New("malformed mcdist datagram")

func newAEAD(key [32]byte) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, key[:], nil, "sfvmm mcdist datagram key", 32)
	if err != nil {
		return nil, err
	}
	b, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func nonce(seq uint64) []byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[4:], seq)
	return n[:]
}

// Sealer makes a family's datagrams. It is not safe for concurrent use.
type Sealer struct {
	aead cipher.AEAD
	seq  uint64
	body []byte
}

// NewSealer returns the sealer of the family whose key is key.
func NewSealer(key [32]byte) (*Sealer, error) {
	a, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: a, body: make([]byte, bodySize)}, nil
}

// Seal appends to dst the datagram carrying page of region, whose
// content is data (PageSize bytes).
func (s *Sealer) Seal(dst []byte, region uint32, page uint64, data []byte) []byte {
	s.seq++
	head := len(dst)
	dst = append(dst, magic...)
	dst = binary.BigEndian.AppendUint64(dst, s.seq)
	dst = binary.LittleEndian.AppendUint32(dst, region)
	dst = binary.LittleEndian.AppendUint64(dst, page)
	return s.aead.Seal(dst, nonce(s.seq), data[:PageSize], dst[head:head+headerSize])
}

// Opener checks and opens a family's datagrams. It is not safe for
// concurrent use.
type Opener struct {
	aead cipher.AEAD
	// The highest sequence number accepted, and which of the WindowSize
	// numbers up to it were (bit i of seen: top-i).
	top  uint64
	seen [WindowSize / 64]uint64
}

// NewOpener returns the opener of the family whose key is key.
func NewOpener(key [32]byte) (*Opener, error) {
	a, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	return &Opener{aead: a}, nil
}

// Peek checks what a datagram's header says, without opening it: its
// form, and that its sequence number is not one seen (ErrReplayed). It
// returns the page it claims to carry, so that a receiver that has the
// page drops it without the cost of opening it.
func (o *Opener) Peek(b []byte) (region uint32, page uint64, err error) {
	if len(b) != Size || string(b[:4]) != magic {
		return 0, 0, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	if seq := binary.BigEndian.Uint64(b[4:12]); seq == 0 || !o.fresh(seq) {
		return 0, 0, ErrReplayed
	}
	return binary.LittleEndian.Uint32(b[12:]), binary.LittleEndian.Uint64(b[16:]), nil
}

// Open checks datagram b and returns its page's region, number and
// content (in buf, which must hold BodySize bytes). The sequence number
// is marked seen only if the datagram authenticates, so that forgeries
// cannot shift the window.
func (o *Opener) Open(b, buf []byte) (region uint32, page uint64, data []byte, err error) {
	if region, page, err = o.Peek(b); err != nil {
		return 0, 0, nil, err
	}
	seq := binary.BigEndian.Uint64(b[4:12])
	data, err = o.aead.Open(buf[:0], nonce(seq), b[headerSize:], b[:headerSize])
	if err != nil {
		return 0, 0, nil, ErrForged
	}
	o.mark(seq)
	return region, page, data, nil
}

// fresh reports whether seq may still be accepted.
func (o *Opener) fresh(seq uint64) bool {
	if seq > o.top {
		return true
	}
	d := o.top - seq
	if d >= WindowSize {
		return false
	}
	return o.seen[d/64]&(1<<(d%64)) == 0
}

func (o *Opener) mark(seq uint64) {
	if seq > o.top {
		shift := seq - o.top
		if shift >= WindowSize {
			o.seen = [WindowSize / 64]uint64{}
		} else {
			o.shift(int(shift))
		}
		o.top = seq
	}
	d := o.top - seq
	o.seen[d/64] |= 1 << (d % 64)
}

// shift moves the window up by n < WindowSize numbers: bit i becomes bit
// i+n.
func (o *Opener) shift(n int) {
	words, bits := n/64, uint(n%64)
	for i := len(o.seen) - 1; i >= 0; i-- {
		var v uint64
		if j := i - words; j >= 0 {
			v = o.seen[j] << bits
			if bits > 0 && j > 0 {
				v |= o.seen[j-1] >> (64 - bits)
			}
		}
		o.seen[i] = v
	}
}

// BodySize is the size of the buffer Open needs.
const BodySize = bodySize
