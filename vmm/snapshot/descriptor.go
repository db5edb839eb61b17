package snapshot

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Version is the descriptor format, including the encoding of every state
// type the VMM puts in it. Bump it when any of them changes: the codec has
// no field names, so an old descriptor decoded into a changed type would be
// misread rather than refused. The VMM pins the encoding of its state and
// its Schema in golden files per version, so that a change made without a
// bump fails its tests.
const Version = 6

// PageSize is the unit of the page bitmaps and of the memory file layout.
const PageSize = 4096

// MaxMemBytes bounds the guest RAM a descriptor may describe (1 TiB).
const MaxMemBytes = MaxPages * PageSize

var (
	// ErrCorrupt reports a descriptor, bitmap or memory file that is
	// damaged, truncated or not a snapshot at all.
	ErrCorrupt = errors.New("snapshot corrupt")
	// ErrVersion reports a descriptor of a version this build cannot read.
	ErrVersion = errors.New("unsupported snapshot version")
)

// Framing of the descriptor; see the package comment.
const (
	magic      = "SFVMMSNP"
	versionEnd = len(magic) + 4 // magic, version: what every version shares
	prefixLen  = versionEnd + 8 // and the payload length
	sumLen     = sha256.Size
	maxPayload = 1 << 30 // far above any real descriptor; keeps int math safe
)

// Header is the part of a descriptor that is the same for every VMM state
// type: what a reader checks before it commits to restoring.
type Header struct {
	// Version is the format version. Encode always writes Version;
	// Decode reports what it read.
	Version         uint32
	CPUs            uint32
	MemBytes        uint64 // guest RAM; the sum of the sizes in Memory
	CreatedUnixNano int64
	// RequiredCPUFeatures names the host CPU features the guest saw
	// (from CPUID) that a restoring host must also have.
	RequiredCPUFeatures []string
	// Memory is the guest RAM layout, ascending by GPA, and which pages of
	// each region the memory file holds. Write fills it in.
	Memory []MemoryRegion
}

// MemoryRegion is one RAM region as the descriptor records it.
type MemoryRegion struct {
	GPA, Size uint64
	Pages     *Bitmap // Size/PageSize bits: which pages hold data
}

// Bitmaps returns the page bitmaps of h.Memory, in order.
func (h Header) Bitmaps() []*Bitmap {
	bm := make([]*Bitmap, len(h.Memory))
	for i, r := range h.Memory {
		bm[i] = r.Pages
	}
	return bm
}

// wire is the descriptor payload. The state is nested as bytes so that the
// header can be read and checked (DecodeHeader, Open) without knowing the
// VMM's state type.
type wire struct {
	CPUs                uint32
	MemBytes            uint64
	CreatedUnixNano     int64
	RequiredCPUFeatures []string
	Memory              []wireRegion
	State               []byte
}

type wireRegion struct {
	GPA, Size uint64
	Pages     []byte // Bitmap.MarshalBinary
}

// checkLayout checks that the regions are page-aligned, ascending, do not
// overlap, sum to memBytes, and that each bitmap covers its region.
func checkLayout(memBytes uint64, regions []MemoryRegion) error {
	var total, end uint64
	for i, r := range regions {
		switch {
		case r.Size == 0 || r.GPA%PageSize != 0 || r.Size%PageSize != 0:
			return fmt.Errorf("region %d [%#x, +%#x) is empty or not page-aligned", i, r.GPA, r.Size)
		case i > 0 && r.GPA < end:
			return fmt.Errorf("region %d at %#x overlaps or precedes the region ending at %#x", i, r.GPA, end)
		case r.Size > MaxMemBytes-total || r.GPA > math.MaxUint64-r.Size:
			return fmt.Errorf("region %d [%#x, +%#x) exceeds the %d bytes of guest RAM a snapshot may hold", i, r.GPA, r.Size, uint64(MaxMemBytes))
		case r.Pages == nil || r.Pages.Len() != r.Size/PageSize:
			var n uint64
			if r.Pages != nil {
				n = r.Pages.Len()
			}
			return fmt.Errorf("region %d of %d pages has a bitmap of %d", i, r.Size/PageSize, n)
		}
		total += r.Size
		end = r.GPA + r.Size
	}
	if total != memBytes {
		return fmt.Errorf("regions hold %d bytes, header says %d", total, memBytes)
	}
	return nil
}

// Encode serialises h and state, a pointer to a struct of plain data (see
// the package comment), into a descriptor. h.Version is ignored.
func Encode(h Header, state any) ([]byte, error) {
	if err := checkLayout(h.MemBytes, h.Memory); err != nil {
		return nil, fmt.Errorf("encode descriptor: memory layout: %w", err)
	}
	st, err := marshal(nil, state, "state")
	if err != nil {
		return nil, fmt.Errorf("encode descriptor: %w", err)
	}
	w := wire{
		CPUs:                h.CPUs,
		MemBytes:            h.MemBytes,
		CreatedUnixNano:     h.CreatedUnixNano,
		RequiredCPUFeatures: h.RequiredCPUFeatures,
		State:               st,
	}
	for _, r := range h.Memory {
		p, _ := r.Pages.MarshalBinary()
		w.Memory = append(w.Memory, wireRegion{GPA: r.GPA, Size: r.Size, Pages: p})
	}
	b := make([]byte, prefixLen, prefixLen+len(st)+256)
	b, err = marshal(b, &w, "header")
	if err != nil {
		return nil, fmt.Errorf("encode descriptor: %w", err)
	}
	if len(b)-prefixLen > maxPayload {
		return nil, fmt.Errorf("encode descriptor: payload of %d bytes exceeds %d", len(b)-prefixLen, maxPayload)
	}
	return seal(b, Version), nil
}

// seal fills in the prefix of b (which has room for it at the front) and
// appends the checksum.
func seal(b []byte, version uint32) []byte {
	copy(b, magic)
	binary.LittleEndian.PutUint32(b[8:], version)
	binary.LittleEndian.PutUint64(b[12:], uint64(len(b)-prefixLen))
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// checkVersion checks the magic and version at the front of b: the framing
// every version shares. A later version may frame the rest differently (a
// longer prefix, another checksum), so a reader checks nothing else before
// this, and a descriptor of another version is refused as such rather than
// as corrupt.
func checkVersion(b []byte) error {
	if len(b) < len(magic) || string(b[:len(magic)]) != magic {
		return fmt.Errorf("%w: not an sfvmm snapshot descriptor (bad magic)", ErrCorrupt)
	}
	if len(b) < versionEnd {
		return fmt.Errorf("%w: descriptor of %d bytes ends before its version", ErrCorrupt, len(b))
	}
	if v := binary.LittleEndian.Uint32(b[len(magic):]); v != Version {
		return fmt.Errorf("%w %d (this sfvmm reads version %d)", ErrVersion, v, Version)
	}
	return nil
}

// open checks the framing of a descriptor and returns its payload.
func open(b []byte) ([]byte, error) {
	if err := checkVersion(b); err != nil {
		return nil, err
	}
	if len(b) < prefixLen+sumLen {
		return nil, fmt.Errorf("%w: descriptor of %d bytes is shorter than its %d-byte frame", ErrCorrupt, len(b), prefixLen+sumLen)
	}
	if n := binary.LittleEndian.Uint64(b[versionEnd:]); n != uint64(len(b)-prefixLen-sumLen) {
		return nil, fmt.Errorf("%w: descriptor of %d bytes says its payload is %d bytes (truncated or trailing data)", ErrCorrupt, len(b), n)
	}
	body := b[:len(b)-sumLen]
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], b[len(body):]) {
		return nil, fmt.Errorf("%w: descriptor checksum mismatch", ErrCorrupt)
	}
	return body[prefixLen:], nil
}

// decodeHeader checks the framing and decodes everything but the state.
func decodeHeader(b []byte) (Header, []byte, error) {
	payload, err := open(b)
	if err != nil {
		return Header{}, nil, err
	}
	var w wire
	if err := unmarshal(payload, &w, "header"); err != nil {
		return Header{}, nil, err
	}
	h := Header{
		Version:             Version,
		CPUs:                w.CPUs,
		MemBytes:            w.MemBytes,
		CreatedUnixNano:     w.CreatedUnixNano,
		RequiredCPUFeatures: w.RequiredCPUFeatures,
	}
	// Sizes are checked before any bitmap is decoded, and each bitmap must
	// cover its region before it is allocated, so that a corrupt header
	// cannot make us allocate more than MaxPages bits in all.
	var total uint64
	for i, r := range w.Memory {
		if r.Size > MaxMemBytes-total {
			return Header{}, nil, fmt.Errorf("%w: region %d: sizes exceed %d bytes", ErrCorrupt, i, uint64(MaxMemBytes))
		}
		total += r.Size
	}
	for i, r := range w.Memory {
		bm, err := unmarshalBitmap(r.Pages, r.Size/PageSize)
		if err != nil {
			return Header{}, nil, fmt.Errorf("%w: region %d: page bitmap: %w", ErrCorrupt, i, err)
		}
		h.Memory = append(h.Memory, MemoryRegion{GPA: r.GPA, Size: r.Size, Pages: bm})
	}
	if err := checkLayout(h.MemBytes, h.Memory); err != nil {
		return Header{}, nil, fmt.Errorf("%w: memory layout: %w", ErrCorrupt, err)
	}
	return h, w.State, nil
}

// DecodeHeader checks a descriptor's magic, version, length and checksum and
// decodes its header, leaving the state alone. A descriptor of another
// version is refused with ErrVersion, whatever follows the version.
func DecodeHeader(b []byte) (Header, error) {
	h, _, err := decodeHeader(b)
	if err != nil {
		return Header{}, fmt.Errorf("decode descriptor: %w", err)
	}
	return h, nil
}

// Decode checks a descriptor as DecodeHeader does and decodes its state into
// state, a pointer to the struct type it was encoded from. A descriptor of
// another version is refused with ErrVersion, as by DecodeHeader; any other
// damage, including trailing data, with ErrCorrupt. It never panics, and
// allocates at most in proportion to len(b), but for the page bitmaps (at
// most MaxPages bits in all). On failure *state is unchanged.
func Decode(b []byte, state any) (Header, error) {
	h, st, err := decodeHeader(b)
	if err != nil {
		return Header{}, fmt.Errorf("decode descriptor: %w", err)
	}
	if err := unmarshal(st, state, "state"); err != nil {
		return Header{}, fmt.Errorf("decode descriptor: %w", err)
	}
	return h, nil
}
