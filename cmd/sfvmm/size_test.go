package main

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		err  string // a part of the error; "" for none
	}{
		{"128", 128 << 20, ""},
		{"512M", 512 << 20, ""},
		{"2G", 2 << 30, ""},
		{"2gib", 2 << 30, ""},
		{" 64KB ", 64 << 10, ""},
		{"1T", 1 << 40, ""},
		{"0", 0, ""},
		{"lots", 0, "invalid size"},
		{"", 0, "invalid size"},
		{"-1M", 0, "invalid size"},
		{"1.5G", 0, "invalid size"},
		{"8388609T", 0, "too large"},
	} {
		got, err := parseSize(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("parseSize(%q) = %d, %v; want an error saying %q", tc.in, got, err, tc.err)
		}
	}
}
