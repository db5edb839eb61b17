package main

import (
	"fmt"
	"strconv"
	"strings"
)

// parseSize parses --memory in the style of QEMU's -m and Firecracker's
// mem_size: a number with an optional K, M, G or T suffix (binary units,
// optional trailing B or iB); a bare number means MiB.
func parseSize(s string) (uint64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	shift := 20
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			shift, t = 10, t[:n-1]
		case 'M':
			shift, t = 20, t[:n-1]
		case 'G':
			shift, t = 30, t[:n-1]
		case 'T':
			shift, t = 40, t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional K, M, G or T suffix", s)
	}
	if v > (1<<63)>>shift {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return v << shift, nil
}
