package main

import "testing"

func TestMedianOf(t *testing.T) {
	for _, c := range []struct {
		vs   []float64
		want float64
	}{{nil, 0}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := medianOf(c.vs); got != c.want {
			t.Errorf("medianOf(%v) = %v, want %v", c.vs, got, c.want)
		}
	}
}

// Each round's ratio counts, not the columns' medians: here the columns'
// medians (90 and 100) would give 0.90; the rounds' ratios are 2, 0.5
// and 1.
func TestPairedRatio(t *testing.T) {
	rate := func(mbps ...float64) []sample {
		var ss []sample
		for _, r := range mbps {
			ss = append(ss, sample{bytes: int64(r * 1e6), ns: 1e9})
		}
		return ss
	}
	if got := pairedRatio(rate(200, 50, 90), rate(100, 100, 90)); got != "1.00" {
		t.Errorf("got %s, want 1.00", got)
	}
	if got := pairedRatio(nil, rate(1)); got != "–" {
		t.Errorf("a VMM that did not run: %s", got)
	}
}
