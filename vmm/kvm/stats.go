package kvm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
)

// Binary statistics (KVM_GET_STATS_FD, Linux 5.14): a file of a header,
// descriptors naming each statistic, and their values.
const (
	statsHeaderSize = 24 // struct kvm_stats_header
	statsDescSize   = 16 // struct kvm_stats_desc without its name
	statsTypeMask   = 0xf
	statsTypeHist   = 3 // KVM_STATS_TYPE_LINEAR_HIST; LOG_HIST is 4
	// Bounds on what a stats file may describe, far above any kernel's
	// (6.18 has about 60 vCPU statistics, names of 48 bytes).
	maxStats        = 4096
	maxStatNameSize = 1024
	maxStatsData    = 1 << 20
)

// Stats reads the vCPU's KVM statistics by name ("exits", "pf_taken",
// "halt_exits", ...): every counter, gauge and peak of one value; the
// histograms are left out. Which statistics there are depends on the
// kernel.
func (c *VCPU) Stats() (map[string]uint64, error) {
	r, err := callValue(c.fd, "KVM_GET_STATS_FD", reqGetStatsFD, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(r, "kvm-vcpu-stats")
	defer f.Close()
	return ParseStats(f)
}

// ReaderAt is io.ReaderAt (this package's io is an ioctl number).
type ReaderAt interface {
	ReadAt(p []byte, off int64) (n int, err error)
}

// readFull reads len(b) bytes at off; only a short read is an error.
func readFull(r ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	switch {
	case n == len(b):
		return nil
	case err != nil:
		return err
	default:
		return fmt.Errorf("%d of %d bytes", n, len(b))
	}
}

// ParseStats reads a KVM binary statistics file (the format of
// KVM_GET_STATS_FD). A malformed file is an error that says what is wrong.
func ParseStats(r ReaderAt) (map[string]uint64, error) {
	hb := make([]byte, statsHeaderSize)
	if err := readFull(r, hb, 0); err != nil {
		return nil, fmt.Errorf("kvm stats: header: %w", err)
	}
	var h struct {
		Flags, NameSize, NumDesc, IDOffset, DescOffset, DataOffset uint32
	}
	if _, err := binary.Decode(hb, binary.LittleEndian, &h); err != nil {
		return nil, fmt.Errorf("kvm stats: header: %w", err)
	}
	if h.NumDesc > maxStats {
		return nil, fmt.Errorf("kvm stats: %d statistics, more than %d", h.NumDesc, maxStats)
	}
	if h.NameSize == 0 || h.NameSize > maxStatNameSize {
		return nil, fmt.Errorf("kvm stats: name size %d, want 1 to %d", h.NameSize, maxStatNameSize)
	}
	descSize := statsDescSize + int64(h.NameSize)
	descs := make([]byte, int64(h.NumDesc)*descSize)
	if err := readFull(r, descs, int64(h.DescOffset)); err != nil {
		return nil, fmt.Errorf("kvm stats: %d descriptors at %d: %w", h.NumDesc, h.DescOffset, err)
	}
	type stat struct {
		name   string
		offset uint32
	}
	var stats []stat
	var dataEnd uint64
	for i := range int64(h.NumDesc) {
		d := descs[i*descSize : (i+1)*descSize]
		flags := binary.LittleEndian.Uint32(d[0:])
		size := binary.LittleEndian.Uint16(d[6:])
		offset := binary.LittleEndian.Uint32(d[8:])
		name, _, _ := bytes.Cut(d[statsDescSize:], []byte{0})
		if len(name) == 0 {
			return nil, fmt.Errorf("kvm stats: descriptor %d has no name", i)
		}
		end := uint64(offset) + 8*uint64(size)
		if end > maxStatsData {
			return nil, fmt.Errorf("kvm stats: %s: %d values at %d, beyond %d bytes of data", name, size, offset, maxStatsData)
		}
		dataEnd = max(dataEnd, end)
		if flags&statsTypeMask >= statsTypeHist || size != 1 {
			continue
		}
		stats = append(stats, stat{string(name), offset})
	}
	data := make([]byte, dataEnd)
	if err := readFull(r, data, int64(h.DataOffset)); err != nil {
		return nil, fmt.Errorf("kvm stats: %d bytes of data at %d: %w", dataEnd, h.DataOffset, err)
	}
	out := make(map[string]uint64, len(stats))
	for _, s := range stats {
		out[s.name] = binary.LittleEndian.Uint64(data[s.offset:])
	}
	return out, nil
}
