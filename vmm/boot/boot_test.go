package boot

import (
	"bytes"
	"errors"
	"math/rand"
	"strings"
	"testing"

	"github.com/sfvmm/sfvmm/vmm/boot/mptable"
	"github.com/sfvmm/sfvmm/vmm/memory"
)

func TestDetect(t *testing.T) {
	elf32 := makeELF(elfClass32, 0x10_0000, []seg{{paddr: 0x10_0000, data: payload(64, 1)}})
	badSum := makeMultibootELF(payload(16, 1), 0)
	le.PutUint32(badSum[0x1008:], 0) // break the checksum
	lateHeader := append(make([]byte, mbSearchLen), mbHeaderBytes(0)...)
	for _, tc := range []struct {
		name string
		img  []byte
		want Kind
		err  string
	}{
		{"bzImage", makeBzImage(defaultBz()), BzImage, ""},
		{"multiboot ELF32", makeMultibootELF(payload(16, 1), 0), Multiboot, ""},
		{"multiboot a.out", append(mbHeaderBytes(mbAoutKludge, 0x10_0000, 0x10_0000, 0, 0, 0x10_0020), payload(64, 2)...), Multiboot, ""},
		{"ELF64", makeELF(elfClass64, 0x20_0000, []seg{{paddr: 0x20_0000, data: payload(64, 3)}}), ELF64, ""},
		{"ELF32 without multiboot", elf32, 0, "ELF32 image without a multiboot header"},
		{"bad multiboot checksum", badSum, 0, "ELF32 image without a multiboot header"},
		{"multiboot header past 8 KiB", lateHeader, 0, "not a bzImage, multiboot or ELF64 kernel"},
		{"random bytes", payload(4096, 9), 0, "not a bzImage, multiboot or ELF64 kernel"},
		{"empty", nil, 0, "not a bzImage, multiboot or ELF64 kernel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Detect(tc.img)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrFormat) {
					t.Fatalf("Detect = %v, %v; want error containing %q wrapping ErrFormat", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Detect = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	if s := fmtKinds(); s != "bzImage multiboot ELF64 Kind(0)" {
		t.Errorf("Kind strings %q", s)
	}
}

func fmtKinds() string {
	var s []string
	for _, k := range []Kind{BzImage, Multiboot, ELF64, 0} {
		s = append(s, k.String())
	}
	return strings.Join(s, " ")
}

// TestLoadRefuses covers every refusal: each case must fail with an error
// naming the problem, never load something half-right.
func TestLoadRefuses(t *testing.T) {
	bz := func(f func(*bzOpts)) []byte {
		o := defaultBz()
		f(&o)
		return makeBzImage(o)
	}
	full := makeBzImage(defaultBz())
	aout := func(load, loadEnd, bssEnd uint32) []byte {
		return append(mbHeaderBytes(mbAoutKludge, load, load, loadEnd, bssEnd, load), payload(256, 4)...)
	}
	for _, tc := range []struct {
		name string
		ram  uint64
		p    Params
		err  string
	}{
		{"random bytes", 64 << 20, Params{Kernel: payload(10000, 3)}, "not a bzImage, multiboot or ELF64 kernel"},
		{"bzImage shorter than its header", 64 << 20, Params{Kernel: full[:0x230]}, "bzimage: truncated: 560 bytes"},
		{"bzImage shorter than setup_sects", 64 << 20, Params{Kernel: full[:0x700]}, "shorter than its 4 setup sectors"},
		{"bzImage shorter than syssize", 64 << 20, Params{Kernel: full[:len(full)-16]}, "the header says the kernel is 12288 bytes, the file holds 12272"},
		{"bzImage protocol 2.06", 64 << 20, Params{Kernel: bz(func(o *bzOpts) { o.version = 0x0206 })}, "boot protocol 2.06 is older than 2.12"},
		{"bzImage not 64-bit", 64 << 20, Params{Kernel: bz(func(o *bzOpts) { o.xloadflags = 0 })}, "not 64-bit capable"},
		{"bzImage cmdline too long", 64 << 20, Params{Kernel: bz(func(o *bzOpts) { o.cmdlineSize = 10 }), Cmdline: "console=ttyS0"}, "command line of 13 bytes exceeds the kernel's cmdline_size 10"},
		{"bzImage init_size beyond RAM", 16 << 20, Params{Kernel: full}, "kernel needs RAM up to 0x1400000"},
		{"bzImage initrd too big", 64 << 20, Params{Kernel: full, Initrd: make([]byte, 60<<20)}, "initrd of 62914560 bytes does not fit between the kernel (ends at 0x1400000) and 0x4000000"},
		{"bzImage initrd above initrd_addr_max", 64 << 20, Params{Kernel: bz(func(o *bzOpts) { o.initrdMax = 0xff_ffff }), Initrd: make([]byte, 4096)}, "does not fit between the kernel (ends at 0x1400000) and 0x1000000"},
		{"bzImage with modules", 64 << 20, Params{Kernel: full, Modules: []Module{{"m", nil}}}, "modules are only for multiboot kernels"},
		{"too many CPUs", 64 << 20, Params{Kernel: full, CPUs: 256}, "256 vCPUs is outside 1..255"},
		{"RAM below 1 MiB", 512 << 10, Params{Kernel: full}, "guest RAM (512 KiB) is smaller than the 1 MiB boot area"},
		{"multiboot segment beyond RAM", 16 << 20, Params{Kernel: makeELF(elfClass32, 0x200_0000, []seg{{paddr: 0x200_0000, data: mbHeaderBytes(0), memsz: 0x1000}})},
			"multiboot: segment at 0x2000000 size 4096 is beyond RAM (16 MiB)"},
		{"multiboot bss beyond RAM", 16 << 20, Params{Kernel: makeMultibootELF(payload(64, 1), 16<<20)}, "multiboot: segment at 0x100000 size 16777292 is beyond RAM (16 MiB)"},
		{"multiboot segment filling the MP table's range", 16 << 20, Params{Kernel: makeELF(elfClass32, 0xe0000, []seg{{paddr: 0xe0000, data: mbHeaderBytes(0), memsz: 0x20000}})},
			"multiboot: mptable: no room for 240 bytes in [0xf0000, 0x100000) beside the kernel segment at [0xe0000, 0x100000)"},
		{"multiboot segment leaving the ACPI tables no room", 16 << 20, Params{Kernel: makeELF(elfClass32, 0xe0000, []seg{{paddr: 0xe0000, data: mbHeaderBytes(0), memsz: 0x1ff00}})},
			"multiboot: acpi: no room for 688 bytes in [0xe0000, 0x100000) beside the kernel segment at [0xe0000, 0xfff00) and the MP table at [0xfff00, 0xffff0)"},
		{"ELF64 segment filling the BIOS area", 16 << 20, Params{Kernel: makeELF(elfClass64, 0xe0000, []seg{{paddr: 0x9f000, data: payload(64, 1), memsz: 0x61000}})},
			"elf64: mptable: no room for 240 bytes in [0xf0000, 0x100000) beside the kernel segment at [0x9f000, 0x100000)"},
		{"multiboot code segment beyond RAM", 128 << 20, Params{Kernel: makeELF(elfClass32, 0x10_0000, []seg{
			{paddr: 0x10_0000, data: mbHeaderBytes(0)}, {paddr: 0x804_8114, data: payload(0x24, 1)}})},
			"multiboot: segment at 0x8048114 size 36 is beyond RAM (128 MiB)"},
		{"multiboot note segment with bss beyond RAM", 128 << 20, Params{Kernel: makeELF(elfClass32, 0x10_0000, []seg{
			{paddr: 0x10_0000, data: mbHeaderBytes(0)}, {paddr: 0x804_8114, data: payload(0x24, 1), memsz: 0x30, note: true}})},
			"multiboot: segment at 0x8048114 size 48 is beyond RAM (128 MiB)"},
		{"multiboot segment over GDT", 16 << 20, Params{Kernel: makeELF(elfClass32, 0x400, []seg{{paddr: 0x400, data: mbHeaderBytes(0), memsz: 0x200}})}, "overlaps the GDT"},
		{"multiboot ELF64", 16 << 20, Params{Kernel: makeELF(elfClass64, 0x10_0000, []seg{{paddr: 0x10_0000, data: mbHeaderBytes(0)}})}, "ELF64 images must use the a.out kludge"},
		{"multiboot unknown required flag", 16 << 20, Params{Kernel: makeELF(elfClass32, 0x10_0000, []seg{{paddr: 0x10_0000, data: mbHeaderBytes(1 << 3)}})}, "requires features 0x8"},
		{"multiboot not ELF, no kludge", 16 << 20, Params{Kernel: append(mbHeaderBytes(0), payload(64, 1)...)}, "not an ELF file, and the header has no a.out kludge addresses"},
		{"a.out header_addr below load_addr", 16 << 20, Params{Kernel: append(mbHeaderBytes(mbAoutKludge, 0x10_0000, 0x10_0100, 0, 0, 0), payload(64, 1)...)}, "put the load start before the file"},
		{"a.out load_end past file", 16 << 20, Params{Kernel: aout(0x10_0000, 0x10_1000, 0)}, "needs 4096 bytes from file offset 0x0; the file has 288"},
		{"a.out bss_end below load_end", 16 << 20, Params{Kernel: aout(0x10_0000, 0x10_0100, 0x10_0080)}, "bss_end_addr 0x100080 is below the end of the loaded image 0x100100"},
		{"a.out beyond RAM", 16 << 20, Params{Kernel: aout(0xfff000, 0, 0x100_1000)}, "multiboot: segment at 0xfff000 size 8192 is beyond RAM (16 MiB)"},
		{"a.out truncated kludge", 16 << 20, Params{Kernel: mbHeaderBytes(mbAoutKludge)}, "the a.out kludge fields are missing"},
		{"multiboot modules beyond RAM", 4 << 20, Params{Kernel: makeMultibootELF(payload(64, 1), 0), Modules: []Module{{"big", make([]byte, 3<<20)}}}, "boot information and 1 modules (3149824 bytes) from 0x101000 do not fit in RAM below 0x400000"},
		{"multiboot with initrd", 16 << 20, Params{Kernel: makeMultibootELF(payload(64, 1), 0), Initrd: []byte{1}}, "an initrd is only for bzImages"},
		{"ELF64 segment beyond RAM", 16 << 20, Params{Kernel: makeELF(elfClass64, 0x100_0000, []seg{{paddr: 0x100_0000, data: payload(64, 1)}})}, "elf64: segment at 0x1000000 size 64 is beyond RAM (16 MiB)"},
		{"ELF64 segment over page tables", 16 << 20, Params{Kernel: makeELF(elfClass64, 0xa000, []seg{{paddr: 0xa000, data: payload(64, 1)}})}, "overlaps the page tables"},
		{"ELF64 segment over stack", 16 << 20, Params{Kernel: makeELF(elfClass64, 0x8000, []seg{{paddr: 0x7000, data: payload(0x1001, 1)}})}, "overlaps the boot stack"},
		{"ELF64 entry above 4 GiB", 16 << 20, Params{Kernel: makeELF(elfClass64, 0x1_0000_0000, []seg{{paddr: 0x20_0000, data: payload(64, 1)}})}, "entry point 0x100000000 is outside the identity-mapped low 4 GiB"},
		{"ELF64 filesz > memsz", 16 << 20, Params{Kernel: func() []byte {
			img := makeELF(elfClass64, 0x20_0000, []seg{{paddr: 0x20_0000, data: payload(64, 1)}})
			le.PutUint64(img[64+40:], 8) // p_memsz
			return img
		}()}, "elf64: segment 0: file size 64 exceeds memory size 8"},
		{"ELF64 segment past file", 16 << 20, Params{Kernel: func() []byte {
			img := makeELF(elfClass64, 0x20_0000, []seg{{paddr: 0x20_0000, data: payload(64, 1)}})
			return img[:len(img)-1]
		}()}, "are beyond the 4159-byte file"},
		{"ELF64 program headers past file", 16 << 20, Params{Kernel: func() []byte {
			img := makeELF(elfClass64, 0x20_0000, []seg{{paddr: 0x20_0000, data: payload(64, 1)}})
			le.PutUint16(img[56:], 1000) // e_phnum
			return img
		}()}, "program headers [0x40, +1000*56) are beyond"},
		{"ELF64 with initrd", 16 << 20, Params{Kernel: makeELF(elfClass64, 0x20_0000, []seg{{paddr: 0x20_0000, data: payload(64, 1)}}), Initrd: []byte{1}}, "an initrd is only for bzImages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := newMem(t, tc.ram)
			e, err := Load(mem, tc.p)
			if err == nil {
				t.Fatalf("Load succeeded: %+v", e)
			}
			if !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Load error %q, want it to contain %q", err, tc.err)
			}
		})
	}
}

func TestGDTDescriptors(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    Segment
		want uint64
	}{
		{"code64", flat(0x10, typeCodeRX, true), 0x00af_9b00_0000_ffff},
		{"code32", flat(0x08, typeCodeRX, false), 0x00cf_9b00_0000_ffff},
		{"data", flat(0x18, typeDataRW, false), 0x00cf_9300_0000_ffff},
	} {
		if got := descriptor(tc.s); got != tc.want {
			t.Errorf("%s descriptor %#016x, want %#016x", tc.name, got, tc.want)
		}
	}
}

// checkGDT checks that the GDT in guest memory holds CS and DS.
func checkGDT(t *testing.T, mem *memory.Memory, e *Entry) {
	t.Helper()
	if e.GDTBase != gdtAddr {
		t.Errorf("GDT at %#x", e.GDTBase)
	}
	for _, s := range []Segment{e.CS, e.DS} {
		if uint32(s.Selector)+7 > uint32(e.GDTLimit) {
			t.Fatalf("selector %#x beyond GDT limit %#x", s.Selector, e.GDTLimit)
		}
		if got := read64(t, mem, e.GDTBase+uint64(s.Selector)); got != descriptor(s) {
			t.Errorf("GDT[%#x] = %#x, want %#x", s.Selector, got, descriptor(s))
		}
		if s.Base != 0 || s.Limit != 0xffff_ffff || s.Present != 1 || s.S != 1 || s.G != 1 {
			t.Errorf("segment %#x is not flat: %+v", s.Selector, s)
		}
	}
}

// checkLong64 checks the 64-bit entry state and the identity page tables.
func checkLong64(t *testing.T, mem *memory.Memory, e *Entry) {
	t.Helper()
	if e.Mode != Long64 || e.CR0 != 0x8000_0031 || e.CR4 != 0x20 || e.EFER != 0x500 || e.CR3 != 0x9000 {
		t.Errorf("long mode state: mode %v CR0 %#x CR4 %#x EFER %#x CR3 %#x", e.Mode, e.CR0, e.CR4, e.EFER, e.CR3)
	}
	if e.CS.Selector != 0x10 || e.CS.L != 1 || e.CS.DB != 0 || e.CS.Type != 0xb || e.DS.Selector != 0x18 || e.DS.Type != 3 {
		t.Errorf("segments CS %+v DS %+v", e.CS, e.DS)
	}
	checkGDT(t, mem, e)
	if got := read64(t, mem, e.CR3); got != 0xa003 {
		t.Errorf("PML4[0] = %#x", got)
	}
	if got := read64(t, mem, e.CR3+8); got != 0 {
		t.Errorf("PML4[1] = %#x", got)
	}
	// Walk a few addresses through the tables: each must map to itself.
	for _, va := range []uint64{0, 0x10_0000 + 0x200, 0x3f_ffff, 0x4000_0000, 0xbfff_f000, 0xfee0_0000, 0xffff_ffff} {
		pdpte := read64(t, mem, 0xa000+8*(va>>30))
		if pdpte&0x3 != 3 {
			t.Fatalf("PDPTE for %#x = %#x", va, pdpte)
		}
		pde := read64(t, mem, pdpte&^0xfff+8*(va>>21&511))
		if pde&0x83 != 0x83 {
			t.Fatalf("PDE for %#x = %#x", va, pde)
		}
		if pa := pde&^0x1f_ffff&(1<<52-1) | va&0x1f_ffff; pa != va {
			t.Errorf("%#x maps to %#x", va, pa)
		}
	}
}

// checkTables finds the MP floating pointer and the RSDP the way a guest
// does, counts the processors both describe, and returns their addresses.
func checkTables(t *testing.T, mem *memory.Memory, cpus int) (mpAddr, rsdpAddr uint64) {
	t.Helper()
	bios := read(t, mem, 0xe0000, 0x20000)
	sum := func(b []byte) (s byte) {
		for _, c := range b {
			s += c
		}
		return s
	}
	mp, rsdp := -1, -1
	for off := 0; off < len(bios); off += 16 {
		if string(bios[off:off+4]) == "_MP_" && off >= 0x10000 && sum(bios[off:off+16]) == 0 {
			mp = off
		}
		if string(bios[off:off+8]) == "RSD PTR " && sum(bios[off:off+20]) == 0 {
			rsdp = off
		}
	}
	if mp < 0 || rsdp < 0 {
		t.Fatalf("MP floating pointer at %d, RSDP at %d", mp, rsdp)
	}
	cfg := bios[le.Uint32(bios[mp+4:])-0xe0000:]
	cfg = cfg[:le.Uint16(cfg[4:])]
	procs := 0
	for p := cfg[44:]; len(p) > 0; {
		if p[0] == 0 {
			procs++
			p = p[20:]
		} else {
			p = p[8:]
		}
	}
	if sum(cfg) != 0 || procs != cpus {
		t.Errorf("MP table: checksum %#x, %d processors, want %d", sum(cfg), procs, cpus)
	}
	xsdt := bios[le.Uint64(bios[rsdp+24:])-0xe0000:]
	madt := bios[le.Uint64(xsdt[44:])-0xe0000:]
	madt = madt[:le.Uint32(madt[4:])]
	procs = 0
	for p := madt[44:]; len(p) > 0; p = p[p[1]:] {
		if p[0] == 0 {
			procs++
		}
	}
	if string(madt[:4]) != "APIC" || sum(madt) != 0 || procs != cpus {
		t.Errorf("MADT %q: checksum %#x, %d processors, want %d", madt[:4], sum(madt), procs, cpus)
	}
	return 0xe0000 + uint64(mp), 0xe0000 + uint64(rsdp)
}

// TestLoadTablesAroundKernel loads kernels with segments where the MP and
// ACPI tables go by default: the tables move to the lowest free place in
// the range guests scan, and the kernel's bytes stay as loaded.
func TestLoadTablesAroundKernel(t *testing.T) {
	const cpus = 2
	mp, err := mptable.Build(0xf0000, cpus)
	if err != nil {
		t.Fatal(err)
	}
	mpLen := uint64(len(mp))
	text := append(mbHeaderBytes(mbPageAlign|mbMemInfo), payload(0x100, 0x41)...)
	for _, tc := range []struct {
		name     string
		class    byte
		segs     []seg
		mp, rsdp uint64
		info     uint64 // multiboot: the info's address (from 1 MiB when the kernel ends in the BIOS area)
	}{
		// gcc -m32 -Wl,-Ttext=0x100000 without a linker script: the ELF
		// headers in a read-only segment of their own at 0xff000.
		{"ELF headers at 0xff000", elfClass32, []seg{{paddr: 0xff000, data: payload(0x114, 0x51)}, {paddr: 0x10_0000, data: text, memsz: 0x3000}},
			0xf0000, 0xe0000, 0x10_3000},
		{"segment over the MP table's place", elfClass32, []seg{{paddr: 0xf0000, data: text, memsz: 0x2010}},
			0xf2010, 0xe0000, 0x10_0000},
		{"segment over the ACPI tables' place", elfClass32, []seg{{paddr: 0xe0000, data: text, memsz: 0x8010}},
			0xf0000, 0xe8040, 0x10_0000},
		{"segment over both", elfClass32, []seg{{paddr: 0xe0000, data: text, memsz: 0x18000}},
			0xf8000, alignUp(0xf8000+mpLen, 64), 0x10_0000},
		{"ELF64 segment over the MP table's place", elfClass64, []seg{{paddr: 0xf0000, data: payload(0x100, 0x61)}, {paddr: 0x20_0000, data: payload(0x100, 0x71)}},
			0xf0100, 0xe0000, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := makeELF(tc.class, tc.segs[len(tc.segs)-1].paddr, tc.segs)
			mem := newMem(t, 16<<20)
			e, err := Load(mem, Params{Kernel: img, CPUs: cpus})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.segs {
				memsz := max(s.memsz, uint64(len(s.data)))
				want := append(bytes.Clone(s.data), make([]byte, memsz-uint64(len(s.data)))...)
				if got := read(t, mem, s.paddr, memsz); !bytes.Equal(got, want) {
					t.Errorf("segment at %#x differs after Load", s.paddr)
				}
			}
			mpAt, rsdpAt := checkTables(t, mem, cpus)
			if mpAt != tc.mp || rsdpAt != tc.rsdp {
				t.Errorf("MP floating pointer at %#x, RSDP at %#x; want %#x, %#x", mpAt, rsdpAt, tc.mp, tc.rsdp)
			}
			if tc.info != 0 && e.RBX != tc.info {
				t.Errorf("multiboot information at %#x, want %#x", e.RBX, tc.info)
			}
		})
	}
}

func FuzzDetect(f *testing.F) {
	f.Add(makeBzImage(defaultBz()))
	f.Add(makeMultibootELF(payload(16, 1), 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := Detect(b)
		if (err == nil) != (k != 0) {
			t.Fatalf("Detect = %v, %v", k, err)
		}
	})
}

// FuzzLoad feeds mutated images of every kind to Load: it must return an
// Entry or an error, never panic or write outside guest RAM.
func FuzzLoad(f *testing.F) {
	small := defaultBz()
	small.initSize = 0x1000
	f.Add(makeBzImage(small), []byte("console=ttyS0"), []byte{1, 2, 3})
	f.Add(makeMultibootELF(payload(64, 1), 0x100), []byte("kernel arg"), []byte("mod"))
	f.Add(append(mbHeaderBytes(mbAoutKludge, 0x10_0000, 0x10_0000, 0, 0x10_1000, 0x10_0020), payload(64, 2)...), []byte{}, []byte{})
	f.Add(makeELF(elfClass64, 0x20_0000, []seg{{paddr: 0x20_0000, data: payload(64, 3), memsz: 0x2000}}), []byte{}, []byte{})
	f.Add(payload(512, 5), []byte{}, []byte{})
	mem, err := memory.New(32 << 20)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	f.Fuzz(func(t *testing.T, kernel, cmdline, extra []byte) {
		p := Params{Kernel: kernel, Cmdline: string(cmdline), CPUs: 1 + len(extra)%4}
		if k, _ := Detect(kernel); k == BzImage {
			p.Initrd = extra
		} else if k == Multiboot && len(extra) > 0 {
			p.Modules = []Module{{Cmdline: "mod", Data: extra}}
		}
		e, err := Load(mem, p)
		if err == nil && (e == nil || (e.Mode != Long64 && e.Mode != Protected32)) {
			t.Fatalf("Load = %+v with no error", e)
		}
	})
}

// TestLoadRandomImages is FuzzLoad's property on a fixed corpus of mutated
// valid images, so that every `go test` exercises it.
func TestLoadRandomImages(t *testing.T) {
	mem := newMem(t, 32<<20)
	small := defaultBz()
	small.initSize = 0x1000
	seeds := [][]byte{
		makeBzImage(small),
		makeMultibootELF(payload(64, 1), 0x100),
		append(mbHeaderBytes(mbAoutKludge, 0x10_0000, 0x10_0000, 0, 0x10_1000, 0x10_0020), payload(64, 2)...),
		makeELF(elfClass64, 0x20_0000, []seg{{paddr: 0x20_0000, data: payload(64, 3), memsz: 0x2000}}),
	}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 4000; i++ {
		img := append([]byte(nil), seeds[i%len(seeds)]...)
		for n := rng.Intn(8); n >= 0; n-- {
			// Corrupt header bytes far more often than payload.
			pos := rng.Intn(min(len(img), 0x280))
			if rng.Intn(4) == 0 {
				pos = rng.Intn(len(img))
			}
			img[pos] = byte(rng.Intn(256))
		}
		if rng.Intn(8) == 0 {
			img = img[:rng.Intn(len(img))]
		}
		p := Params{Kernel: img, CPUs: 1 + rng.Intn(4)}
		if _, err := Load(mem, p); err != nil && err.Error() == "" {
			t.Fatalf("empty error for image %d", i)
		}
	}
}
