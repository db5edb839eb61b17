package helper

import (
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestBitmap(t *testing.T) {
	tests := []struct {
		name string
		n    uint64
		runs []Run
		all  bool
		set  []uint64 // pages that must be in the set; the others must not
		ok   bool
	}{
		{"empty", 10, nil, false, nil, true},
		{"all", 130, nil, true, seq(0, 130), true},
		{"runs across words", 200, []Run{{1, 2}, {62, 70}}, false, append([]uint64{1, 2}, seq(62, 132)...), true},
		{"run past the end", 10, []Run{{8, 3}}, false, nil, false},
		{"run starting past the end", 10, []Run{{10, 1}}, false, nil, false},
	}
	for _, tt := range tests {
		b, err := NewBitmap(tt.n, tt.runs, tt.all)
		if (err == nil) != tt.ok {
			t.Errorf("%s: error %v, want ok=%t", tt.name, err, tt.ok)
			continue
		}
		if err != nil {
			continue
		}
		want := map[uint64]bool{}
		for _, p := range tt.set {
			want[p] = true
		}
		for p := uint64(0); p < tt.n+70; p++ {
			if b.Get(p) != want[p] {
				t.Errorf("%s: page %d in set = %t, want %t", tt.name, p, b.Get(p), want[p])
			}
		}
	}
}

func seq(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

func TestControlMessages(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *Conn {
		f := os.NewFile(uintptr(fd), "ctl")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return &Conn{c: c.(*net.UnixConn)}
	}
	a, b := conn(fds[0]), conn(fds[1])
	defer a.Close()
	defer b.Close()

	type msg struct {
		Op   string
		Runs []Run
	}
	mem, f, err := Shared(4096)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mem[0] = 42
	big := make([]Run, 100000) // more than a socket buffer holds
	go func() {
		a.Send(msg{Op: "first", Runs: big}, int(f.Fd()))
		a.Send(msg{Op: "second"})
		a.Close()
	}()
	var m msg
	got, err := b.Recv(&m)
	if err != nil || m.Op != "first" || len(m.Runs) != len(big) || len(got) != 1 {
		t.Fatalf("first message: %q, %d runs, fds %v, %v", m.Op, len(m.Runs), got, err)
	}
	// The descriptor is the shared memory: the helper sees what the VMM wrote.
	peer, err := MapShared(got[0], 4096)
	if err != nil {
		t.Fatal(err)
	}
	if peer[0] != 42 {
		t.Errorf("shared memory reads %d, want 42", peer[0])
	}
	unix.Close(got[0])
	if got, err := b.Recv(&m); err != nil || m.Op != "second" || len(got) != 0 {
		t.Errorf("second message: %q, fds %v, %v", m.Op, got, err)
	}
	if _, err := b.Recv(&m); err == nil {
		t.Error("no error at the end of the stream")
	}
}

func TestRuns(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range []uint64{1, 63, 64, 65, 200, 1000} {
		for trial := 0; trial < 20; trial++ {
			var sets [3][]Run
			for k := range sets {
				for i := uint64(0); i < n; {
					l := uint64(r.IntN(80)) + 1
					if r.IntN(2) == 0 {
						sets[k] = append(sets[k], Run{i, min(l, n-i)})
					}
					i += l
				}
			}
			var bm [3]*Bitmap
			for k := range bm {
				var err error
				if bm[k], err = NewBitmap(n, sets[k], false); err != nil {
					t.Fatal(err)
				}
			}
			want := []Run{}
			for i := uint64(0); i < n; i++ {
				if bm[0].Get(i) || (bm[1].Get(i) && !bm[2].Get(i)) {
					if l := len(want); l > 0 && want[l-1].Start+want[l-1].N == i {
						want[l-1].N++
					} else {
						want = append(want, Run{i, 1})
					}
				}
			}
			got := []Run{}
			Runs(bm[0], bm[1], bm[2], func(s, l uint64) { got = append(got, Run{s, l}) })
			if !slices.Equal(got, want) {
				t.Fatalf("%d pages: runs %v, want %v", n, got, want)
			}
		}
	}
}
