package boot

import (
	"bytes"
	"testing"
)

func TestLoadELF64(t *testing.T) {
	text, data := payload(0x1234, 0x70), payload(0x100, 0x80)
	img := makeELF(elfClass64, 0xffff_ffff_8020_0010, []seg{
		{paddr: 0x20_0000, vaddr: 0xffff_ffff_8020_0000, data: text},
		{paddr: 0x40_0000, vaddr: 0xffff_ffff_8040_0000, data: data, memsz: 0x3000},
	})
	mem := newMem(t, 64<<20)
	e, err := Load(mem, Params{Kernel: img, CPUs: 3})
	if err != nil {
		t.Fatal(err)
	}
	if e.RIP != 0x20_0010 || e.RSP != 0x8ff0 || e.RSI != 0 || e.RAX != 0 || e.RBX != 0 {
		t.Errorf("registers: RIP %#x RSP %#x RSI %#x", e.RIP, e.RSP, e.RSI)
	}
	checkLong64(t, mem, e)
	checkTables(t, mem, 3)
	if got := read(t, mem, 0x20_0000, uint64(len(text))); !bytes.Equal(got, text) {
		t.Error("text differs")
	}
	if got := read(t, mem, 0x40_0000, 0x3000); !bytes.Equal(got[:0x100], data) || !bytes.Equal(got[0x100:], make([]byte, 0x2f00)) {
		t.Error("data or bss differs")
	}
}

func TestParseELFProgramHeaders(t *testing.T) {
	img := makeELF(elfClass32, 0x10_0000, []seg{{paddr: 0x10_0000, data: payload(8, 1)}, {paddr: 0x20_0000, memsz: 0}})
	f, err := parseELF(img)
	if err != nil {
		t.Fatal(err)
	}
	// The empty segment (memsz 0) is dropped; the other is exact.
	if len(f.Loads) != 1 || f.Loads[0] != (elfSegment{Off: 0x1000, Vaddr: 0x10_0000, Paddr: 0x10_0000, Filesz: 8, Memsz: 8}) {
		t.Errorf("loads %+v", f.Loads)
	}
	for _, bad := range [][]byte{img[:40], append(img[:4:4], 3, 1)} {
		if _, err := parseELF(bad); err == nil {
			t.Errorf("parseELF(% x) succeeded", bad[:min(len(bad), 8)])
		}
	}
}

func TestParseELFOverlap(t *testing.T) {
	img := makeELF(elfClass64, 0x20_0000, []seg{
		{paddr: 0x30_0000, data: payload(16, 1)},
		{paddr: 0x20_0000, data: payload(16, 1), memsz: 0x10_0001},
	})
	if _, err := parseELF(img); err == nil || err.Error() != "segments at 0x200000 (size 1048577) and 0x300000 overlap" {
		t.Errorf("parseELF = %v", err)
	}
}
