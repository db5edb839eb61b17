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
	var b bytes.Buffer // a few KiB
	if _, err := b.ReadFrom(f); err != nil {
		return nil, fmt.Errorf("kvm stats: %w", err)
	}
	return ParseStats(b.Bytes())
}

// ParseStats reads a KVM binary statistics file (the format of
// KVM_GET_STATS_FD). A malformed file is an error that says what is wrong.
func ParseStats(b []byte) (map[string]uint64, error) {
	if len(b) < statsHeaderSize {
		return nil, fmt.Errorf("kvm stats: header: %d bytes of %d", len(b), statsHeaderSize)
	}
	le := binary.LittleEndian
	nameSize, numDesc := le.Uint32(b[4:]), le.Uint32(b[8:])
	descOffset, dataOffset := uint64(le.Uint32(b[16:])), uint64(le.Uint32(b[20:]))
	if numDesc > maxStats {
		return nil, fmt.Errorf("kvm stats: %d statistics, more than %d", numDesc, maxStats)
	}
	if nameSize == 0 || nameSize > maxStatNameSize {
		return nil, fmt.Errorf("kvm stats: name size %d, want 1 to %d", nameSize, maxStatNameSize)
	}
	descSize := statsDescSize + uint64(nameSize)
	if descOffset+uint64(numDesc)*descSize > uint64(len(b)) {
		return nil, fmt.Errorf("kvm stats: %d descriptors at %d, beyond the file's %d bytes", numDesc, descOffset, len(b))
	}
	out := map[string]uint64{}
	for i := range uint64(numDesc) {
		d := b[descOffset+i*descSize : descOffset+(i+1)*descSize]
		flags, size, offset := le.Uint32(d[0:]), le.Uint16(d[6:]), uint64(le.Uint32(d[8:]))
		name, _, _ := bytes.Cut(d[statsDescSize:], []byte{0})
		if len(name) == 0 {
			return nil, fmt.Errorf("kvm stats: descriptor %d has no name", i)
		}
		if end := dataOffset + offset + 8*uint64(size); end > uint64(len(b)) {
			return nil, fmt.Errorf("kvm stats: %s: %d values at %d, beyond the file's %d bytes", name, size, dataOffset+offset, len(b))
		}
		if flags&statsTypeMask >= statsTypeHist || size != 1 {
			continue
		}
		out[string(name)] = le.Uint64(b[dataOffset+offset:])
	}
	return out, nil
}
