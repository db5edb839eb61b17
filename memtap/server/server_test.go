package server

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/sfvmm/sfvmm/memtap/internal/tlslink"
	"github.com/sfvmm/sfvmm/memtap/wire"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	HelperMain()
	os.Exit(m.Run())
}

const page = 4096

// newRAM maps n pages; page i holds byte i+1 when i%4 == 0, zeroes when
// i%4 == 1 (touched), and is never touched otherwise.
func newRAM(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	for i := 0; i < n; i++ {
		switch i % 4 {
		case 0:
			copy(b[i*page:(i+1)*page], bytes.Repeat([]byte{byte(i + 1)}, page))
		case 1:
			b[i*page] = 0
		}
	}
	return b
}

// fetch asks the server at addr for count pages from first and returns the
// flags and data pages.
func fetch(t *testing.T, addr string, key wire.Key, first uint64, count uint32) ([]byte, [][]byte) {
	t.Helper()
	c, err := tlslink.Dial("tcp", addr, key)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	h, err := wire.ReadHello(c)
	if err != nil {
		t.Fatal(err)
	}
	nonce, _ := wire.NewNonce()
	c.Write(wire.Auth{Nonce: nonce, MAC: wire.ClientMAC(key, h.Nonce, nonce)}.Encode())
	b := make([]byte, wire.WelcomeSize)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	c.Write(wire.Request{First: first, Count: count, Tag: 7}.Append(nil))
	b = make([]byte, wire.ResponseSize)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	r, err := wire.DecodeResponse(b)
	if err != nil || r.Tag != 7 || r.Count != count {
		t.Fatalf("response %+v, %v", r, err)
	}
	flags := make([]byte, count)
	io.ReadFull(c, flags)
	n, _ := wire.DataPages(flags)
	var data [][]byte
	for range n {
		p := make([]byte, page)
		if _, err := io.ReadFull(c, p); err != nil {
			t.Fatal(err)
		}
		data = append(data, p)
	}
	return flags, data
}

func TestFreezeServesThePast(t *testing.T) {
	ram := newRAM(t, 16)
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	im, err := s.Freeze([]Region{{Host: ram}}) // populated: by mincore
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Freeze([]Region{{Host: ram}}); err == nil {
		t.Error("a second image was frozen over the first")
	}
	key, _ := wire.NewKey()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	if err := im.Serve(l, key); err != nil {
		t.Fatal(err)
	}
	// The parent overwrites everything, populated or not.
	for i := range ram {
		ram[i] = 0xEE
	}
	flags, data := fetch(t, addr, key, 0, 16)
	for i, f := range flags {
		want := []byte{wire.PageData, wire.PageZero, wire.PageAbsent, wire.PageAbsent}[i%4]
		if f != want {
			t.Errorf("page %d: flag %d, want %d", i, f, want)
		}
	}
	for k, d := range data {
		if want := bytes.Repeat([]byte{byte(4*k + 1)}, page); !bytes.Equal(d, want) {
			t.Errorf("data page %d holds %d, want %d", k, d[0], want[0])
		}
	}
	st := s.Stats()
	if st.PagesSaved != 8 || st.PagesSent != 4 || st.PagesEmpty != 12 || st.Requests != 1 {
		t.Errorf("stats %+v: want 8 saved, 4 sent, 12 empty, 1 request", st)
	}

	// Closing the image lifts the protection: writes no longer fault, and
	// a new image of the present can be frozen.
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	before := s.Stats().WriteFaults
	for i := range ram {
		ram[i] = 0x11
	}
	if got := s.Stats().WriteFaults; got != before {
		t.Errorf("%d write faults after the image was closed", got-before)
	}
	im, err = s.Freeze([]Region{{Host: ram}})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	l, _ = net.Listen("tcp", "127.0.0.1:0")
	addr = l.Addr().String()
	im.Serve(l, key)
	ram[0] = 0x22
	if _, data := fetch(t, addr, key, 0, 1); len(data) != 1 || data[0][0] != 0x11 {
		t.Errorf("second image: page 0 = %v, want 0x11", data)
	}
}

// Between Arm and Seal the parent writes freely (a write only unprotects
// the page); the image is the memory at Seal: pages written before it
// hold their new content, pages written after it their sealed one, and a
// page first populated between the two is protected by Seal too.
func TestArmThenSeal(t *testing.T) {
	ram := newRAM(t, 16)
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	im, err := s.Arm([]Region{{Host: ram}})
	if err != nil {
		t.Fatal(err)
	}
	ram[0*page] = 0xA0 // populated at Arm, written before Seal
	ram[2*page] = 0xA2 // populated only now
	faults := s.Stats().WriteFaults
	if err := im.Seal([]Region{{Host: ram}}); err != nil {
		t.Fatal(err)
	}
	if err := im.Seal([]Region{{Host: ram}}); err == nil {
		t.Error("a second Seal was accepted")
	}
	if s.Stats().PagesSaved != 0 {
		t.Errorf("pages saved before Seal: %d", s.Stats().PagesSaved)
	}
	key, _ := wire.NewKey()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	if err := im.Serve(l, key); err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	for _, i := range []int{0, 2, 4} {
		ram[i*page] = 0xEE
	}
	if got := s.Stats().WriteFaults - faults; got != 3 {
		t.Errorf("%d write faults after Seal, want 3 (pages 0, 2 and 4 protected again or still)", got)
	}
	_, data := fetch(t, addr, key, 0, 5)
	if len(data) != 3 || data[0][0] != 0xA0 || data[1][0] != 0xA2 || data[2][0] != 5 {
		var got []byte
		for _, d := range data {
			got = append(got, d[0])
		}
		t.Errorf("pages 0, 2, 4 served as %x, want a0 a2 05", got)
	}
}

func TestHelperDeathReleasesParent(t *testing.T) {
	ram := newRAM(t, 64)
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Freeze([]Region{{Host: ram}}); err != nil {
		t.Fatal(err)
	}
	// Kill the helper; the kernel then drops the protection, and the
	// parent's writes go through with no handler.
	syscall.Kill(s.PID(), syscall.SIGKILL)
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the helper's death went unnoticed")
	}
	if s.Err() == nil {
		t.Error("no error after the helper died")
	}
	wrote := make(chan struct{})
	go func() {
		for i := 0; i < len(ram); i += page {
			ram[i] = 0x33
		}
		close(wrote)
	}()
	select {
	case <-wrote:
	case <-time.After(5 * time.Second):
		t.Fatal("the parent hangs on its own RAM after the helper died")
	}
	if _, err := s.Freeze([]Region{{Host: ram}}); err == nil {
		t.Error("froze with a dead helper")
	}
}

func TestFreezeRefusesBadRegions(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ram := newRAM(t, 4)
	tests := []struct {
		name    string
		regions []Region
	}{
		{"none", nil},
		{"not whole pages", []Region{{Host: ram[:page+1]}}},
		{"unaligned", []Region{{Host: ram[1 : page+1]}}},
		{"populated set too short", []Region{{Host: ram, Populated: runs{n: 3}}}},
		{"empty", []Region{{Host: make([]byte, 0)}}},
	}
	for _, tt := range tests {
		if im, err := s.Freeze(tt.regions); err == nil {
			im.Close()
			t.Errorf("%s: frozen", tt.name)
		}
	}
}

type runs struct{ n uint64 }

func (r runs) Len() uint64                   { return r.n }
func (r runs) Runs(fn func(start, n uint64)) { fn(0, r.n) }

// Guest RAM is on transparent huge pages, and a freeze protects them as
// they are: a written huge page and the huge zero page (what a read of
// untouched RAM maps) are split only where the parent writes, and every
// other page of them stays protected (kernels that lost the protection on
// a split served the parent's new bytes to clones).
//
// A signal to a thread waiting in a write-protect fault makes the kernel
// deliver that fault again once the handler returns (the Go runtime's
// preemption and garbage collector signal running threads): the page is
// still saved once. With signals sent all through the writes, about one
// run in twenty sees such a repeat.
func TestFreezeHugePages(t *testing.T) {
	t.Run("quiet", freezeHugePages)
	t.Run("signalled", func(t *testing.T) {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				syscall.Kill(os.Getpid(), syscall.SIGURG)
				time.Sleep(50 * time.Microsecond)
			}
		}()
		defer func() { close(stop); <-done }()
		freezeHugePages(t)
	})
}

func freezeHugePages(t *testing.T) {
	const huge = 2 << 20
	if thp, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled"); err != nil || bytes.Contains(thp, []byte("[never]")) {
		t.Skipf("transparent huge pages are off here (%q, %v)", thp, err)
	}
	m, err := unix.Mmap(-1, 0, 3*huge, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(m) })
	head := (huge - int(uintptr(unsafe.Pointer(&m[0])))%huge) % huge
	ram := m[head : head+2*huge]
	if err := unix.Madvise(ram, unix.MADV_HUGEPAGE); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < huge; i += page {
		ram[i] = byte(i/page + 1)
	}
	if err := unix.Madvise(ram[huge:], unix.MADV_POPULATE_READ); err != nil {
		t.Fatal(err)
	}
	if kib := anonHugeKiB(t, ram); kib < huge/1024 {
		t.Skipf("the kernel gave %d KiB of huge pages, not the first 2 MiB", kib)
	}
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	im, err := s.Freeze([]Region{{Host: ram}})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	key, _ := wire.NewKey()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	if err := im.Serve(l, key); err != nil {
		t.Fatal(err)
	}
	// Pages 0 and 1 of each huge page, then page 2, after the first
	// writes split them.
	for _, p := range []int{0, 1, 512, 513, 2, 514} {
		ram[p*page] = 0xEE
	}
	if st := s.Stats(); st.WriteFaults < 6 || st.PagesSaved != 6 {
		t.Errorf("%d write faults, %d pages saved; want 6 or more, and 6", st.WriteFaults, st.PagesSaved)
	}
	flags, data := fetch(t, l.Addr().String(), key, 0, 3)
	for k, d := range data {
		if flags[k] != wire.PageData || d[0] != byte(k+1) {
			t.Errorf("page %d: flag %d, byte %#x; want the frozen %#x", k, flags[k], d[0], k+1)
		}
	}
	flags, data = fetch(t, l.Addr().String(), key, 512, 3)
	for k, f := range flags {
		if f != wire.PageZero {
			t.Errorf("page %d of the zero huge page: flag %d, want zero (data %d pages)", 512+k, f, len(data))
		}
	}
}

// anonHugeKiB sums AnonHugePages of the mappings in /proc/self/smaps that
// overlap b.
func anonHugeKiB(t *testing.T, b []byte) uint64 {
	t.Helper()
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	lo := uint64(uintptr(unsafe.Pointer(&b[0])))
	hi := lo + uint64(len(b))
	var kib uint64
	in := false
	for _, line := range strings.Split(string(smaps), "\n") {
		var start, end, n uint64
		if k, _ := fmt.Sscanf(line, "%x-%x ", &start, &end); k == 2 {
			in = start < hi && end > lo
		} else if k, _ := fmt.Sscanf(line, "AnonHugePages: %d kB", &n); in && k == 1 {
			kib += n
		}
	}
	return kib
}
