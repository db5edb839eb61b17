package boot

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/sfvmm/sfvmm/vmm/memory"
)

// mbInfo is the multiboot information as a guest reads it.
type mbInfo struct {
	flags, memLower, memUpper uint32
	bootDevice                uint32
	cmdline, loader           string
	mods                      []mbMod
	mmap                      []e820Entry
}

type mbMod struct {
	start, end uint32
	cmdline    string
}

func readInfo(t *testing.T, mem *memory.Memory, addr uint64) mbInfo {
	t.Helper()
	b := read(t, mem, addr, mbiLen)
	i := mbInfo{
		flags: le.Uint32(b[0:]), memLower: le.Uint32(b[4:]), memUpper: le.Uint32(b[8:]), bootDevice: le.Uint32(b[12:]),
		cmdline: cstring(t, mem, uint64(le.Uint32(b[16:]))), loader: cstring(t, mem, uint64(le.Uint32(b[64:]))),
	}
	if !bytes.Equal(b[68:], make([]byte, mbiLen-68)) || !bytes.Equal(b[28:44], make([]byte, 16)) {
		t.Errorf("info has stray bytes: % x", b)
	}
	for n, p := 0, uint64(le.Uint32(b[24:])); n < int(le.Uint32(b[20:])); n, p = n+1, p+16 {
		m := read(t, mem, p, 16)
		i.mods = append(i.mods, mbMod{le.Uint32(m), le.Uint32(m[4:]), cstring(t, mem, uint64(le.Uint32(m[8:])))})
	}
	mm := read(t, mem, uint64(le.Uint32(b[48:])), uint64(le.Uint32(b[44:])))
	for len(mm) > 0 {
		size := le.Uint32(mm)
		i.mmap = append(i.mmap, e820Entry{le.Uint64(mm[4:]), le.Uint64(mm[12:]), le.Uint32(mm[20:])})
		mm = mm[4+size:]
	}
	return i
}

func TestLoadMultiboot(t *testing.T) {
	text := payload(0x2345, 0x11)
	mods := []Module{
		{Cmdline: "initrd.img", Data: payload(0x1800, 0x21)},
		{Cmdline: "/path/to/mod2 arg1 arg2", Data: payload(10, 0x31)},
		{Cmdline: "empty", Data: nil},
	}
	const cmdline = "/path/kernel.elf console=ttyS0 -- x"
	const gib = 1 << 30
	for _, tc := range []struct {
		name string
		ram  uint64
		mods []Module
		mmap []e820Entry
	}{
		{"32 MiB, no modules", 32 << 20, nil, []e820Entry{{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x10_0000, 31 << 20, 1}}},
		{"128 MiB, 3 modules", 128 << 20, mods, []e820Entry{{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x10_0000, 127 << 20, 1}}},
		{"4 GiB", 4 * gib, mods[:1], []e820Entry{{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x10_0000, 3*gib - 0x10_0000, 1}, {4 * gib, gib, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const bss = 0x4321
			img := makeMultibootELF(text, bss)
			mem := newMem(t, tc.ram)
			e, err := Load(mem, Params{Kernel: img, Cmdline: cmdline, Modules: tc.mods, CPUs: 2})
			if err != nil {
				t.Fatal(err)
			}
			// The kernel: header + text at 1 MiB, then a zeroed bss.
			filesz := uint64(12 + len(text))
			if got := read(t, mem, 0x10_0000, filesz); !bytes.Equal(got, img[0x1000:]) {
				t.Error("segment bytes differ")
			}
			if got := read(t, mem, 0x10_0000+filesz, bss); !bytes.Equal(got, make([]byte, bss)) {
				t.Error("bss is not zeroed")
			}
			kernelEnd := 0x10_0000 + filesz + bss
			infoAddr := alignUp(kernelEnd, 4096)
			if e.Mode != Protected32 || e.RIP != 0x10_0010 || e.RAX != 0x2badb002 || e.RBX != infoAddr || e.RSI != 0 {
				t.Errorf("entry: mode %v RIP %#x RAX %#x RBX %#x (want %#x)", e.Mode, e.RIP, e.RAX, e.RBX, infoAddr)
			}
			if e.CR0 != 0x11 || e.CR3 != 0 || e.CR4 != 0 || e.EFER != 0 {
				t.Errorf("control registers CR0 %#x CR3 %#x CR4 %#x EFER %#x", e.CR0, e.CR3, e.CR4, e.EFER)
			}
			if e.CS.Selector != 0x08 || e.CS.DB != 1 || e.CS.L != 0 || e.CS.Type != 0xb || e.DS.Selector != 0x10 || e.DS.DB != 1 || e.DS.Type != 3 {
				t.Errorf("segments CS %+v DS %+v", e.CS, e.DS)
			}
			checkGDT(t, mem, e)
			checkTables(t, mem, 2)
			// 0x8000-0x9fff stays the kernel's: Load wrote nothing there.
			if got := read(t, mem, 0x8000, 0x2000); !bytes.Equal(got, bytes.Repeat([]byte{0xcc}, 0x2000)) {
				t.Error("Load wrote into 0x8000-0x9fff")
			}

			info := readInfo(t, mem, e.RBX)
			lowTop := min(tc.ram, 3*gib)
			// QEMU's flags and boot_device: memory, boot device, command
			// line, modules, memory map, loader name.
			if info.flags != 0x24f || info.memLower != 639 || uint64(info.memUpper) != (lowTop-0x10_0000)>>10 || info.bootDevice != 0x8000ffff {
				t.Errorf("flags %#x mem_lower %d mem_upper %d boot_device %#x", info.flags, info.memLower, info.memUpper, info.bootDevice)
			}
			if info.cmdline != cmdline || info.loader != "sfvmm" {
				t.Errorf("cmdline %q loader %q", info.cmdline, info.loader)
			}
			if fmt.Sprint(info.mmap) != fmt.Sprint(tc.mmap) {
				t.Errorf("mmap:\n got %x\nwant %x", info.mmap, tc.mmap)
			}
			if len(info.mods) != len(tc.mods) {
				t.Fatalf("%d modules, want %d", len(info.mods), len(tc.mods))
			}
			// Modules follow the info page(s), each page aligned, and do
			// not overlap the kernel, the info or each other.
			prevEnd := infoAddr + mbiLen
			for i, m := range info.mods {
				want := tc.mods[i]
				if m.start%4096 != 0 || uint64(m.start) < prevEnd || m.end-m.start != uint32(len(want.Data)) {
					t.Errorf("module %d at [%#x, %#x), previous end %#x", i, m.start, m.end, prevEnd)
				}
				if m.cmdline != want.Cmdline {
					t.Errorf("module %d cmdline %q, want %q", i, m.cmdline, want.Cmdline)
				}
				if got := read(t, mem, uint64(m.start), uint64(len(want.Data))); !bytes.Equal(got, want.Data) {
					t.Errorf("module %d bytes differ", i)
				}
				prevEnd = uint64(m.end)
			}
		})
	}
}

func TestLoadMultibootAout(t *testing.T) {
	// A flat binary loaded at 2 MiB with the header 0x20 bytes in: the load
	// starts 0x10 bytes before the header, stops at load_end_addr, and the
	// bss runs to bss_end_addr.
	const load = 0x20_0000
	img := append(payload(0x20, 0x50), mbHeaderBytes(mbAoutKludge|mbMemInfo, load+0x10, load, load+0x100, load+0x3000, load+0x40)...)
	img = append(img, payload(0x200, 0x60)...)
	mem := newMem(t, 16<<20)
	e, err := Load(mem, Params{Kernel: img, Cmdline: "aout"})
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, mem, load, 0x100); !bytes.Equal(got, img[0x10:0x110]) {
		t.Error("image bytes differ")
	}
	if got := read(t, mem, load+0x100, 0x2f00); !bytes.Equal(got, make([]byte, 0x2f00)) {
		t.Error("bss not zeroed")
	}
	if e.RIP != load+0x40 || e.RBX != load+0x3000 || e.RAX != 0x2badb002 {
		t.Errorf("RIP %#x RBX %#x RAX %#x", e.RIP, e.RBX, e.RAX)
	}
	if info := readInfo(t, mem, e.RBX); info.cmdline != "aout" {
		t.Errorf("cmdline %q", info.cmdline)
	}
}

// A kernel in conventional memory whose information would run into the
// EBDA gets it from 1 MiB instead.
func TestLoadMultibootLowKernel(t *testing.T) {
	img := makeELF(elfClass32, 0x9_0000, []seg{{paddr: 0x9_0000, data: mbHeaderBytes(0), memsz: 0xf000}})
	mem := newMem(t, 16<<20)
	e, err := Load(mem, Params{Kernel: img, Modules: []Module{{"m", payload(0x2000, 1)}}})
	if err != nil {
		t.Fatal(err)
	}
	if e.RBX != 0x10_0000 {
		t.Errorf("info at %#x, want 0x100000", e.RBX)
	}
	if info := readInfo(t, mem, e.RBX); len(info.mods) != 1 || info.mods[0].start != 0x10_1000 {
		t.Errorf("modules %+v", info.mods)
	}
}

func TestParseModules(t *testing.T) {
	files := map[string][]byte{"a": {1}, "b,c": {2}, "/x/d": {3}}
	readFile := func(p string) ([]byte, error) {
		if b, ok := files[p]; ok {
			return b, nil
		}
		return nil, fmt.Errorf("open %s: %w", p, errors.ErrUnsupported)
	}
	for _, tc := range []struct {
		spec string
		want string
		err  string
	}{
		{"", "[]", ""},
		{"a", `["a":[1]]`, ""},
		{"a arg1 arg2,/x/d", `["a arg1 arg2":[1] "/x/d":[3]]`, ""},
		{"b,,c x,,y,a", `["b,c x,y":[2] "a":[1]]`, ""},
		{"a,", "", "module 2 has no file name"},
		{",a", "", "module 1 has no file name"},
		{"a, a", "", "module 2 has no file name"},
		{"a,nope", "", "module 2: open nope"},
	} {
		mods, err := ParseModules(tc.spec, readFile)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseModules(%q) error %v, want %q", tc.spec, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseModules(%q): %v", tc.spec, err)
			continue
		}
		var got []string
		for _, m := range mods {
			got = append(got, fmt.Sprintf("%q:%v", m.Cmdline, m.Data))
		}
		if s := "[" + strings.Join(got, " ") + "]"; s != tc.want {
			t.Errorf("ParseModules(%q) = %s, want %s", tc.spec, s, tc.want)
		}
	}
}

// TestLoadMultibootNoteBeyondRAM: ld without a linker script puts the
// build-id note in a segment of its own at 0x08048114. Like QEMU, Load
// loads it when RAM reaches it; beyond RAM it leaves it out, and the
// information follows the segments it did load.
func TestLoadMultibootNoteBeyondRAM(t *testing.T) {
	const notePaddr = 0x804_8114
	note := payload(0x24, 0x91)
	img := makeELF(elfClass32, 0x10_0010, []seg{
		{paddr: 0xff000, data: payload(0xd4, 0x81)},
		{paddr: 0x10_0000, data: append(mbHeaderBytes(mbMemInfo), payload(0x100, 0x71)...), memsz: 0x2000},
		{paddr: notePaddr, data: note, note: true},
	})
	for _, tc := range []struct {
		name     string
		ram      uint64
		noteRead bool
		info     uint64
	}{
		{"128 MiB: note left out", 128 << 20, false, 0x10_2000},
		{"256 MiB: note loaded", 256 << 20, true, 0x804_9000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := newMem(t, tc.ram)
			e, err := Load(mem, Params{Kernel: img, Cmdline: "k.elf "})
			if err != nil {
				t.Fatal(err)
			}
			if e.RBX != tc.info {
				t.Errorf("information at %#x, want %#x", e.RBX, tc.info)
			}
			if info := readInfo(t, mem, e.RBX); info.cmdline != "k.elf " {
				t.Errorf("cmdline %q", info.cmdline)
			}
			if tc.noteRead {
				if got := read(t, mem, notePaddr, uint64(len(note))); !bytes.Equal(got, note) {
					t.Error("note bytes differ")
				}
			}
		})
	}
}

func TestMultibootCmdline(t *testing.T) {
	for _, tc := range []struct{ path, cmdline, want string }{
		{"k.elf", "", "k.elf "}, // QEMU keeps the space when -append is empty
		{"/p/k.elf", "a b", "/p/k.elf a b"},
		{"k.elf", " a ", "k.elf  a "},
	} {
		if got := MultibootCmdline(tc.path, tc.cmdline); got != tc.want {
			t.Errorf("MultibootCmdline(%q, %q) = %q, want %q", tc.path, tc.cmdline, got, tc.want)
		}
	}
}
