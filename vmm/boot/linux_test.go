package boot

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadBzImage(t *testing.T) {
	const gib = 1 << 30
	for _, tc := range []struct {
		name      string
		ram       uint64
		initrdMax uint32
		initrd    int
		cpus      int
		e820      []e820Entry
		initrdAt  uint64
	}{
		{
			name: "64 MiB", ram: 64 << 20, initrdMax: 0x7fff_ffff, initrd: 5000, cpus: 1,
			e820:     []e820Entry{{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x10_0000, 63 << 20, 1}},
			initrdAt: 64<<20 - 0x2000,
		},
		{
			name: "initrd_addr_max caps the initrd", ram: 256 << 20, initrdMax: 0x7ff_ffff, initrd: 0x1000, cpus: 4,
			e820:     []e820Entry{{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x10_0000, 255 << 20, 1}},
			initrdAt: 0x800_0000 - 0x1000,
		},
		{
			name: "5 GiB has a high region", ram: 5 * gib, initrdMax: 0xffff_ffff, initrd: 1 << 20, cpus: 255,
			e820:     []e820Entry{{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x10_0000, 3*gib - 0x10_0000, 1}, {4 * gib, 2 * gib, 1}},
			initrdAt: 3*gib - 1<<20,
		},
		{
			name: "no initrd", ram: 64 << 20, initrdMax: 0x7fff_ffff, cpus: 2,
			e820: []e820Entry{{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x10_0000, 63 << 20, 1}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := defaultBz()
			o.initrdMax = tc.initrdMax
			img := makeBzImage(o)
			initrd := payload(tc.initrd, 0x42)
			mem := newMem(t, tc.ram)
			const cmdline = "console=ttyS0 root=/dev/vda"
			e, err := Load(mem, Params{Kernel: img, Cmdline: cmdline, Initrd: initrd, CPUs: tc.cpus})
			if err != nil {
				t.Fatal(err)
			}
			if e.RIP != 0x10_0200 || e.RSI != 0x7000 || e.RSP != 0x8ff0 || e.RAX != 0 || e.RBX != 0 {
				t.Errorf("registers: RIP %#x RSI %#x RSP %#x RAX %#x RBX %#x", e.RIP, e.RSI, e.RSP, e.RAX, e.RBX)
			}
			checkLong64(t, mem, e)
			checkTables(t, mem, tc.cpus)

			if got := read(t, mem, 0x10_0000, uint64(len(img)-5*512)); !bytes.Equal(got, img[5*512:]) {
				t.Error("protected-mode kernel is not at 1 MiB")
			}
			zp := read(t, mem, 0x7000, 4096)
			// The setup header is copied; then the loader's fields are set.
			want := append([]byte(nil), img[0x1f1:0x26c]...)
			want[0x210-0x1f1] = 0xff
			want[0x211-0x1f1] |= 0x80
			le.PutUint16(want[0x224-0x1f1:], 0xfe00)
			le.PutUint32(want[0x228-0x1f1:], 0x20000)
			if tc.initrd > 0 {
				le.PutUint32(want[0x218-0x1f1:], uint32(tc.initrdAt))
				le.PutUint32(want[0x21c-0x1f1:], uint32(tc.initrd))
			}
			if got := zp[0x1f1:0x26c]; !bytes.Equal(got, want) {
				t.Errorf("setup header in zero page:\n got % x\nwant % x", got, want)
			}
			if !bytes.Equal(zp[0x26c:0x2d0], make([]byte, 0x2d0-0x26c)) || !bytes.Equal(zp[:0x70], make([]byte, 0x70)) {
				t.Error("zero page has stray bytes outside the fields Load sets")
			}
			if got := le.Uint64(zp[0x70:]); got != 0xe0000 {
				t.Errorf("acpi_rsdp_addr %#x", got)
			}
			if got := cstring(t, mem, 0x20000); got != cmdline {
				t.Errorf("command line %q", got)
			}
			var e820 []e820Entry
			for i := 0; i < int(zp[0x1e8]); i++ {
				r := zp[0x2d0+20*i:]
				e820 = append(e820, e820Entry{le.Uint64(r), le.Uint64(r[8:]), le.Uint32(r[16:])})
			}
			if fmt.Sprint(e820) != fmt.Sprint(tc.e820) {
				t.Errorf("e820:\n got %x\nwant %x", e820, tc.e820)
			}
			if tc.initrd > 0 {
				if tc.initrdAt%4096 != 0 {
					t.Fatalf("test wants unaligned initrd")
				}
				if got := read(t, mem, tc.initrdAt, uint64(tc.initrd)); !bytes.Equal(got, initrd) {
					t.Error("initrd bytes differ")
				}
			}
		})
	}
}

func TestPlaceInitrd(t *testing.T) {
	for _, tc := range []struct {
		size, addrMax, kernelEnd, low, want uint64
		ok                                  bool
	}{
		{0x1000, 0x7fff_ffff, 0x140_0000, 0x400_0000, 0x3ff_f000, true},
		{0x1001, 0x7fff_ffff, 0x140_0000, 0x400_0000, 0x3ff_e000, true},
		{0x1000, 0, 0x140_0000, 0x4000_0000, 0x37ff_f000, true}, // pre-2.03 default
		{0x2c0_0000, 0x7fff_ffff, 0x140_0000, 0x400_0000, 0x140_0000, true},
		{0x2c0_0001, 0x7fff_ffff, 0x140_0000, 0x400_0000, 0, false},
		{0x500_0000, 0x7fff_ffff, 0x140_0000, 0x400_0000, 0, false},
	} {
		got, err := placeInitrd(tc.size, tc.addrMax, tc.kernelEnd, tc.low)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("placeInitrd(%#x, %#x, %#x, %#x) = %#x, %v; want %#x, ok %v", tc.size, tc.addrMax, tc.kernelEnd, tc.low, got, err, tc.want, tc.ok)
		}
	}
}

// TestDebianKernel loads a real Debian vmlinuz when one is at hand: under
// the repository's build/ folder or named by $SFVMM_VMLINUZ.
func TestDebianKernel(t *testing.T) {
	path := os.Getenv("SFVMM_VMLINUZ")
	if path == "" {
		filepath.WalkDir("../../build", func(p string, d fs.DirEntry, err error) error {
			if err == nil && path == "" && d.Type().IsRegular() && strings.HasPrefix(d.Name(), "vmlinuz-") {
				path = p
			}
			return nil
		})
		if path == "" {
			t.Skip("no vmlinuz-* under build/ and SFVMM_VMLINUZ unset")
		}
	}
	t.Logf("kernel %s", path)
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := Detect(img); k != BzImage || err != nil {
		t.Fatalf("Detect(%s) = %v, %v", path, k, err)
	}
	mem := newMem(t, 512<<20)
	initrd := payload(3<<20, 7)
	e, err := Load(mem, Params{Kernel: img, Cmdline: "console=ttyS0 panic=-1", Initrd: initrd, CPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	checkLong64(t, mem, e)
	checkTables(t, mem, 2)
	setup := (int(img[0x1f1]) + 1) * 512
	if got := read(t, mem, 0x10_0000, 4096); !bytes.Equal(got, img[setup:setup+4096]) {
		t.Error("kernel not at 1 MiB")
	}
	zp := read(t, mem, 0x7000, 4096)
	if string(zp[0x202:0x206]) != "HdrS" || zp[0x210] != 0xff || le.Uint32(zp[0x228:]) != 0x20000 {
		t.Errorf("zero page header: magic %q loader %#x cmdline %#x", zp[0x202:0x206], zp[0x210], le.Uint32(zp[0x228:]))
	}
	addr, size := uint64(le.Uint32(zp[0x218:])), le.Uint32(zp[0x21c:])
	if size != uint32(len(initrd)) || addr%4096 != 0 || addr+uint64(size) > 512<<20 {
		t.Errorf("initrd at %#x size %d", addr, size)
	}
	// Debian's kernel needs ~80 MiB (init_size from 16 MiB): 64 MiB is refused.
	small := newMem(t, 64<<20)
	if _, err := Load(small, Params{Kernel: img}); err == nil {
		t.Error("Load into 64 MiB succeeded")
	} else {
		t.Log(err)
	}
}
