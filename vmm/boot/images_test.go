package boot

import (
	"testing"

	"github.com/sfvmm/sfvmm/vmm/memory"
)

// Synthetic kernel images for the tests: just enough of each format for the
// loader, with recognisable payload bytes.

// bzOpts shape a synthetic bzImage.
type bzOpts struct {
	setupSects  byte
	version     uint16
	xloadflags  uint16
	kernelLen   int
	initSize    uint32
	cmdlineSize uint32
	initrdMax   uint32
}

func defaultBz() bzOpts {
	return bzOpts{
		setupSects: 4, version: 0x020f, xloadflags: 1, kernelLen: 0x3000,
		initSize: 0x40_0000, cmdlineSize: 2047, initrdMax: 0x7fff_ffff,
	}
}

func makeBzImage(o bzOpts) []byte {
	sects := int(o.setupSects)
	if sects == 0 {
		sects = 4
	}
	setup := (sects + 1) * 512
	img := make([]byte, setup+o.kernelLen)
	img[hdrSetupSects] = o.setupSects
	le.PutUint16(img[0x1fe:], 0xaa55)
	img[hdrJump], img[hdrJump+1] = 0xeb, 0x6a // header ends at 0x26c
	copy(img[hdrMagic:], "HdrS")
	le.PutUint16(img[hdrVersion:], o.version)
	le.PutUint32(img[hdrSysSize:], uint32(o.kernelLen/16))
	img[hdrLoadFlags] = loadedHigh
	le.PutUint32(img[hdrInitrdAddrMax:], o.initrdMax)
	le.PutUint32(img[hdrKernelAlign:], 0x20_0000)
	img[hdrRelocatable] = 1
	le.PutUint16(img[hdrXLoadFlags:], o.xloadflags)
	le.PutUint32(img[hdrCmdlineSize:], o.cmdlineSize)
	le.PutUint64(img[hdrPrefAddress:], 0x100_0000)
	le.PutUint32(img[hdrInitSize:], o.initSize)
	img[0x26a] = 0x5a // a byte inside the header, past the fields Load sets
	for i := setup; i < len(img); i++ {
		img[i] = byte(i * 7)
	}
	return img
}

// seg is a loadable segment of a synthetic ELF file.
type seg struct {
	paddr, vaddr uint64
	data         []byte
	memsz        uint64
	note         bool // a PT_NOTE header covers the data too
}

// makeELF builds an ELF file of the given class (1 or 2) with PT_LOAD
// segments whose data starts at file offset 0x1000, followed by the PT_NOTE
// headers of the note segments.
func makeELF(class byte, entry uint64, segs []seg) []byte {
	ehsize, phsize := 52, 32
	machine := uint16(emI386)
	if class == elfClass64 {
		ehsize, phsize, machine = 64, 56, emX86_64
	}
	off := 0x1000
	img := make([]byte, off)
	var notes []int // program header indexes of the note segments
	copy(img, "\x7fELF")
	img[4], img[5], img[6] = class, elfDataLSB, 1
	le.PutUint16(img[16:], elfTypeExec)
	le.PutUint16(img[18:], machine)
	le.PutUint32(img[20:], 1)
	for i, s := range segs {
		ph := img[ehsize+i*phsize:]
		vaddr := s.vaddr
		if vaddr == 0 {
			vaddr = s.paddr
		}
		memsz := max(s.memsz, uint64(len(s.data)))
		le.PutUint32(ph[0:], ptLoad)
		if class == elfClass64 {
			le.PutUint32(ph[4:], 7)
			le.PutUint64(ph[8:], uint64(len(img)))
			le.PutUint64(ph[16:], vaddr)
			le.PutUint64(ph[24:], s.paddr)
			le.PutUint64(ph[32:], uint64(len(s.data)))
			le.PutUint64(ph[40:], memsz)
		} else {
			le.PutUint32(ph[4:], uint32(len(img)))
			le.PutUint32(ph[8:], uint32(vaddr))
			le.PutUint32(ph[12:], uint32(s.paddr))
			le.PutUint32(ph[16:], uint32(len(s.data)))
			le.PutUint32(ph[20:], uint32(memsz))
			le.PutUint32(ph[24:], 7)
		}
		if s.note {
			notes = append(notes, i)
		}
		img = append(img, s.data...)
	}
	// A PT_NOTE header is its PT_LOAD's copy with another type.
	for i, n := range notes {
		ph := img[ehsize+(len(segs)+i)*phsize:]
		copy(ph[:phsize], img[ehsize+n*phsize:])
		le.PutUint32(ph[0:], ptNote)
	}
	phnum := uint16(len(segs) + len(notes))
	if class == elfClass64 {
		le.PutUint64(img[24:], entry)
		le.PutUint64(img[32:], uint64(ehsize))
		le.PutUint16(img[52:], uint16(ehsize))
		le.PutUint16(img[54:], uint16(phsize))
		le.PutUint16(img[56:], phnum)
	} else {
		le.PutUint32(img[24:], uint32(entry))
		le.PutUint32(img[28:], uint32(ehsize))
		le.PutUint16(img[40:], uint16(ehsize))
		le.PutUint16(img[42:], uint16(phsize))
		le.PutUint16(img[44:], phnum)
	}
	return img
}

// mbHeaderBytes is a multiboot header with the given flags and, when the
// kludge bit is set, address fields.
func mbHeaderBytes(flags uint32, addrs ...uint32) []byte {
	h := make([]byte, 12, 32)
	le.PutUint32(h[0:], mbHeaderMagic)
	le.PutUint32(h[4:], flags)
	le.PutUint32(h[8:], -(mbHeaderMagic + flags))
	for _, a := range addrs {
		h = le.AppendUint32(h, a)
	}
	return h
}

// payload returns n recognisable bytes.
func payload(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*13)
	}
	return b
}

// makeMultibootELF is an ELF32 multiboot kernel: text at 1 MiB starting
// with the header, and a bss.
func makeMultibootELF(text []byte, bss uint64) []byte {
	data := append(mbHeaderBytes(mbPageAlign|mbMemInfo), text...)
	return makeELF(elfClass32, 0x10_0010, []seg{{paddr: 0x10_0000, data: data, memsz: uint64(len(data)) + bss}})
}

// newMem maps guest RAM, dirtied so that tests notice bytes Load should
// have zeroed.
func newMem(t testing.TB, size uint64) *memory.Memory {
	t.Helper()
	mem, err := memory.New(size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	b, err := mem.Slice(0, min(size, 8<<20))
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0xcc
	}
	return mem
}

func read(t *testing.T, mem *memory.Memory, addr, n uint64) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := mem.ReadAt(b, int64(addr)); err != nil {
		t.Fatalf("read [%#x, +%d): %v", addr, n, err)
	}
	return b
}

func read32(t *testing.T, mem *memory.Memory, addr uint64) uint32 {
	t.Helper()
	return le.Uint32(read(t, mem, addr, 4))
}

func read64(t *testing.T, mem *memory.Memory, addr uint64) uint64 {
	t.Helper()
	return le.Uint64(read(t, mem, addr, 8))
}

func cstring(t *testing.T, mem *memory.Memory, addr uint64) string {
	t.Helper()
	var s []byte
	for {
		c := read(t, mem, addr+uint64(len(s)), 1)[0]
		if c == 0 {
			return string(s)
		}
		s = append(s, c)
		if len(s) > 1<<16 {
			t.Fatalf("unterminated string at %#x", addr)
		}
	}
}
