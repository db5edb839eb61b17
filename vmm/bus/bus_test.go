package bus

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

type recorder struct {
	reads, writes []string
}

func (r *recorder) Read(off uint64, data []byte) {
	r.reads = append(r.reads, fmt.Sprintf("%#x/%d", off, len(data)))
	for i := range data {
		data[i] = byte(off) + byte(i)
	}
}

func (r *recorder) Write(off uint64, data []byte) {
	r.writes = append(r.writes, fmt.Sprintf("%#x=%x", off, data))
}

func TestDispatch(t *testing.T) {
	var out strings.Builder
	b := New("pio", slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug})))
	d := &recorder{}
	if err := b.Register(0x3f8, 8, d); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2)
	b.Read(0x3fa, got)
	if !bytes.Equal(got, []byte{2, 3}) || d.reads[0] != "0x2/2" {
		t.Errorf("read at 0x3fa: %v, device saw %v", got, d.reads)
	}
	b.Write(0x3f8, []byte{0x41})
	if d.writes[0] != "0x0=41" {
		t.Errorf("device saw writes %v", d.writes)
	}
	// An access straddling the end of the range is not the device's.
	b.Read(0x3ff, got)
	if !bytes.Equal(got, []byte{0xff, 0xff}) || len(d.reads) != 1 {
		t.Errorf("straddling read: %v, device reads %v", got, d.reads)
	}
	b.Write(0x80, []byte{1})
	logs := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(logs) != 2 || !strings.Contains(logs[1], "level=DEBUG") || !strings.Contains(logs[1], "unclaimed 1-byte write of 0x1 at 0x80") {
		t.Errorf("logs %q", logs)
	}
}

func TestRegisterRefusesOverlap(t *testing.T) {
	b := New("mmio", nil)
	if err := b.Register(0x1000, 0x100, &recorder{}); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]uint64{{0x1000, 1}, {0xf00, 0x101}, {0x10ff, 2}, {0x800, 0x1000}, {0, 0}, {^uint64(0), 2}} {
		if err := b.Register(r[0], r[1], &recorder{}); err == nil {
			t.Errorf("Register(%#x, %#x) succeeded over an existing range", r[0], r[1])
		}
	}
	if err := b.Register(0x1100, 0x100, &recorder{}); err != nil {
		t.Errorf("adjacent range refused: %v", err)
	}
}

// A guest hammering unclaimed ports cannot flood the log.
func TestUnclaimedLogIsRateLimited(t *testing.T) {
	var out strings.Builder
	b := New("pio", slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug})))
	buf := make([]byte, 1)
	for i := 0; i < 100000; i++ {
		b.Read(0x200, buf)
	}
	if n := strings.Count(out.String(), "\n"); n > unclaimedLogBurst+1 {
		t.Errorf("%d log lines for 100000 accesses in well under a second", n)
	}
	if buf[0] != 0xff {
		t.Errorf("unclaimed read returned %#x", buf[0])
	}
}
