package acpi

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestAMLS5(t *testing.T) {
	pkg, err := amlIntPackage(5, 5, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := amlName("_S5", pkg)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0x08, '_', 'S', '5', '_', // NameOp "_S5_"
		0x12, 0x08, 0x04, // PackageOp, PkgLength 8, 4 elements
		0x0a, 0x05, 0x0a, 0x05, // BytePrefix 5, BytePrefix 5
		0x00, 0x00, // ZeroOp, ZeroOp
	}
	if !bytes.Equal(got, want) {
		t.Errorf("Name(_S5, Package(){5, 5, 0, 0}) = % x, want % x", got, want)
	}
}

// A virtio-mmio device in the DSDT, byte for byte as ACPI 6.5 lays it out
// (what iasl compiles from the ASL in the comments).
func TestVirtioDevice(t *testing.T) {
	got, err := virtioDevice(1, VirtioMMIO{Base: 0xd000_1000, Size: 0x200, GSI: 17})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0x5b, 0x82, 0x3a, 'V', 'R', '0', '1', // Device(VR01), PkgLength 0x3a
		0x08, '_', 'H', 'I', 'D', 0x0d, 'L', 'N', 'R', 'O', '0', '0', '0', '5', 0, // Name(_HID, "LNRO0005")
		0x08, '_', 'U', 'I', 'D', 0x01, // Name(_UID, One)
		0x08, '_', 'C', 'R', 'S', 0x11, 0x1a, 0x0a, 0x17, // Name(_CRS, Buffer(23){
		0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xd0, 0x00, 0x02, 0x00, 0x00, // Memory32Fixed(ReadWrite, 0xd0001000, 0x200)
		0x89, 0x06, 0x00, 0x01, 0x01, 0x11, 0x00, 0x00, 0x00, // Interrupt(ResourceConsumer, Level, ActiveHigh, Exclusive){17}
		0x79, 0x00, // EndTag })
	}
	if !bytes.Equal(got, want) {
		t.Errorf("virtio device:\n got % x\nwant % x", got, want)
	}
	tb, err := Build(0xe0000, 1, Devices{Virtio: []VirtioMMIO{{0xd000_0000, 0x200, 16}, {0xd000_1000, 0x200, 17}}})
	if err != nil {
		t.Fatal(err)
	}
	dsdt := tb.Data[tb.Offsets["DSDT"]:]
	dsdt = dsdt[:le.Uint32(dsdt[4:])]
	if sum(dsdt) != 0 {
		t.Error("DSDT checksum")
	}
	scope := []byte{0x10, 0x4f, 0x07, '\\', '_', 'S', 'B', '_'} // Scope(\_SB_), PkgLength 0x7f
	if i := bytes.Index(dsdt, scope); i < 0 || !bytes.HasSuffix(dsdt, want) {
		t.Errorf("DSDT has no \\_SB_ scope holding both devices:\n% x", dsdt)
	}
	if _, err := Build(0xe0000, 1, Devices{Virtio: []VirtioMMIO{{0xffff_ff00, 0x200, 16}}}); err == nil {
		t.Error("a window across 4 GiB was taken")
	}
}

// The PCI host bridge in the DSDT, byte for byte (what iasl compiles from
// the ASL in the comments).
func TestPCIHostDevice(t *testing.T) {
	got, err := pciHostDevice(PCIHost{Base: 0xe000_0000, Size: 0x1000_0000})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0x5b, 0x82, 0x43, 0x05, 'P', 'C', 'I', '0', // Device(PCI0), PkgLength 0x53
		0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03, // Name(_HID, EisaId("PNP0A03"))
		0x08, '_', 'U', 'I', 'D', 0x00, // Name(_UID, Zero)
		0x08, '_', 'C', 'R', 'S', 0x11, 0x37, 0x0a, 0x34, // Name(_CRS, Buffer(52){
		// WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0, 0, 1)
		0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
		0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08, // IO(Decode16, 0xcf8, 0xcf8, 1, 8)
		// DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,
		// 0, 0xe0000000, 0xefffffff, 0, 0x10000000)
		0x87, 0x17, 0x00, 0x00, 0x0c, 0x01, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xef,
		0, 0, 0, 0, 0x00, 0x00, 0x00, 0x10,
		0x79, 0x00, // EndTag })
	}
	if !bytes.Equal(got, want) {
		t.Errorf("pci host bridge:\n got % x\nwant % x", got, want)
	}
	tb, err := Build(0xe0000, 1, Devices{PCI: PCIHost{Base: 0xe000_0000, Size: 0x1000_0000}})
	if err != nil {
		t.Fatal(err)
	}
	dsdt := tb.Data[tb.Offsets["DSDT"]:]
	dsdt = dsdt[:le.Uint32(dsdt[4:])]
	if sum(dsdt) != 0 || !bytes.HasSuffix(dsdt, want) {
		t.Errorf("DSDT does not end with the host bridge, or its checksum is wrong:\n% x", dsdt)
	}
	if _, err := Build(0xe0000, 1, Devices{PCI: PCIHost{Base: 0xffff_0000, Size: 0x2_0000}}); err == nil {
		t.Error("a window across 4 GiB was taken")
	}
}

// The VM generation ID device and the GPE method that notifies it, byte
// for byte (ACPI 6.5, 20.2); the ID's 16 bytes follow the RSDP.
func TestVMGenIDDevice(t *testing.T) {
	tb, err := Build(0xe0000, 1, Devices{VMGenID: true})
	if err != nil {
		t.Fatal(err)
	}
	if tb.VMGenID != 0xe0030 || tb.RSDP() != 0xe0000 {
		t.Fatalf("ID at %#x, RSDP at %#x: want 0xe0030 and 0xe0000", tb.VMGenID, tb.RSDP())
	}
	dsdt := tb.Data[tb.Offsets["DSDT"]:]
	dsdt = dsdt[:le.Uint32(dsdt[4:])]
	if sum(dsdt) != 0 {
		t.Error("DSDT checksum")
	}
	str := func(s string) []byte { return append(append([]byte{0x0d}, s...), 0) }
	var dev []byte
	dev = append(dev, 0x5b, 0x82, 0x4d, 0x04, 'V', 'G', 'E', 'N') // Device(VGEN), PkgLength 0x4d
	dev = append(append(dev, 0x08, '_', 'H', 'I', 'D'), str("VMGENCTR")...)
	dev = append(append(dev, 0x08, '_', 'C', 'I', 'D'), str("VM_GEN_COUNTER")...)
	dev = append(append(dev, 0x08, '_', 'D', 'D', 'N'), str("VM_Gen_Counter")...)
	dev = append(dev, 0x08, 'A', 'D', 'D', 'R', 0x12, 0x08, 0x02, 0x0c, 0x30, 0x00, 0x0e, 0x00, 0x00) // Package(){0xe0030, 0}
	gpe := []byte{
		0x10, 0x1a, '\\', '_', 'G', 'P', 'E', // Scope(\_GPE)
		0x14, 0x13, '_', 'E', '0', '0', 0x00, // Method(_E00, 0, NotSerialized)
		0x86, '\\', 0x2e, '_', 'S', 'B', '_', 'V', 'G', 'E', 'N', 0x0a, 0x80, // Notify(\_SB.VGEN, 0x80)
	}
	if !bytes.Contains(dsdt, dev) || !bytes.HasSuffix(dsdt, gpe) {
		t.Errorf("DSDT lacks the VGEN device or the _GPE method:\n% x", dsdt)
	}
	fadt := tb.Data[tb.Offsets["FACP"]:]
	if le.Uint32(fadt[fadtGPE0Blk:]) != GPE0Blk || fadt[fadtGPE0BlkLen] != GPE0Len {
		t.Error("FADT has no GPE0 block")
	}
}

func TestAMLInteger(t *testing.T) {
	for _, tc := range []struct {
		v    uint64
		want []byte
	}{
		{0, []byte{0x00}},
		{1, []byte{0x01}},
		{2, []byte{0x0a, 0x02}},
		{0xff, []byte{0x0a, 0xff}},
		{0x100, []byte{0x0b, 0x00, 0x01}},
		{0x12345678, []byte{0x0c, 0x78, 0x56, 0x34, 0x12}},
		{1 << 32, []byte{0x0e, 0, 0, 0, 0, 1, 0, 0, 0}},
	} {
		if got := amlInteger(tc.v); !bytes.Equal(got, tc.want) {
			t.Errorf("amlInteger(%#x) = % x, want % x", tc.v, got, tc.want)
		}
	}
}

func TestAMLPkgLength(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want []byte
	}{
		{0, []byte{0x01}},
		{62, []byte{0x3f}},
		{63, []byte{0x41, 0x04}},            // 65 = 0x41: nibble 1, then 0x04
		{0xffd, []byte{0x4f, 0xff}},         // 0xfff, the most two bytes hold
		{0xffe, []byte{0x81, 0x00, 0x01}},   // 0x1001 needs three
		{0x12345, []byte{0x88, 0x34, 0x12}}, // 0x12348
	} {
		got, err := amlPkgLength(tc.n)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, tc.want) {
			t.Errorf("amlPkgLength(%#x) = % x, want % x", tc.n, got, tc.want)
		}
	}
	if _, err := amlPkgLength(1 << 28); err == nil {
		t.Error("amlPkgLength(2^28) succeeded")
	}
}

func TestAMLNameSeg(t *testing.T) {
	for _, bad := range []string{"", "_S5__", "5S", "s5", "A-B"} {
		if _, err := amlNameSeg(bad); err == nil {
			t.Errorf("amlNameSeg(%q) succeeded", bad)
		}
	}
	if got, _ := amlNameSeg("PR0"); string(got) != "PR0_" {
		t.Errorf("amlNameSeg(PR0) = %q", got)
	}
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// table returns the table at guest address addr, checking its header.
func table(t *testing.T, tb *Tables, addr uint64, sig string) []byte {
	t.Helper()
	off := int(addr - tb.Base)
	if addr < tb.Base || off+36 > len(tb.Data) {
		t.Fatalf("%s at %#x is outside the tables", sig, addr)
	}
	b := tb.Data[off:]
	if got := string(b[:4]); got != sig {
		t.Fatalf("table at %#x is %q, want %q", addr, got, sig)
	}
	n := int(le.Uint32(b[4:]))
	if off+n > len(tb.Data) {
		t.Fatalf("%s length %d runs past the tables", sig, n)
	}
	b = b[:n]
	if s := sum(b); s != 0 {
		t.Errorf("%s checksum: bytes sum to %#x", sig, s)
	}
	if got := string(b[10:16]); got != "SFVMM " {
		t.Errorf("%s OEM ID %q", sig, got)
	}
	return b
}

func TestBuild(t *testing.T) {
	for _, cpus := range []int{1, 2, 64, 255} {
		tb, err := Build(0xe0000, cpus, Devices{})
		if err != nil {
			t.Fatalf("Build(%d): %v", cpus, err)
		}
		rsdp := tb.Data[:36]
		if string(rsdp[:8]) != "RSD PTR " || rsdp[15] != 2 || le.Uint32(rsdp[20:]) != 36 {
			t.Fatalf("RSDP header % x", rsdp[:24])
		}
		if sum(rsdp[:20]) != 0 || sum(rsdp) != 0 {
			t.Errorf("RSDP checksums: %#x, %#x", sum(rsdp[:20]), sum(rsdp))
		}
		if tb.RSDP() != 0xe0000 || tb.RSDP()%16 != 0 {
			t.Errorf("RSDP at %#x", tb.RSDP())
		}

		xsdt := table(t, tb, le.Uint64(rsdp[24:]), "XSDT")
		rsdt := table(t, tb, uint64(le.Uint32(rsdp[16:])), "RSDT")
		if len(xsdt) != 36+16 || len(rsdt) != 36+8 {
			t.Fatalf("XSDT %d bytes, RSDT %d bytes", len(xsdt), len(rsdt))
		}
		for i, sig := range []string{"FACP", "APIC"} {
			if x, r := le.Uint64(xsdt[36+8*i:]), le.Uint32(rsdt[36+4*i:]); x != uint64(r) {
				t.Errorf("XSDT[%d] %#x != RSDT[%d] %#x", i, x, i, r)
			}
			table(t, tb, le.Uint64(xsdt[36+8*i:]), sig)
		}

		fadt := table(t, tb, le.Uint64(xsdt[36:]), "FACP")
		checkFADT(t, tb, fadt)
		madt := table(t, tb, le.Uint64(xsdt[44:]), "APIC")
		checkMADT(t, madt, cpus)
	}
}

func checkFADT(t *testing.T, tb *Tables, f []byte) {
	t.Helper()
	if len(f) != 276 || f[8] != 6 {
		t.Errorf("FADT length %d revision %d, want 276, 6", len(f), f[8])
	}
	u16 := func(o int) uint32 { return uint32(le.Uint16(f[o:])) }
	u32 := func(o int) uint32 { return le.Uint32(f[o:]) }
	for _, c := range []struct {
		name      string
		got, want uint32
	}{
		{"SCI_INT", u16(46), 9},
		{"SMI_CMD", u32(48), 0},
		{"PM1a_EVT_BLK", u32(56), 0x600},
		{"PM1a_CNT_BLK", u32(64), 0x604},
		{"PM_TMR_BLK", u32(76), 0},
		{"PM1_EVT_LEN", uint32(f[88]), 4},
		{"PM1_CNT_LEN", uint32(f[89]), 2},
		{"PM_TMR_LEN", uint32(f[91]), 0},
		{"IAPC_BOOT_ARCH 8042", u16(109) & 2, 2},
		{"flags RESET_REG_SUP", u32(112) & (1 << 10), 1 << 10},
		{"flags HW_REDUCED_ACPI", u32(112) & (1 << 20), 0},
		{"RESET_REG space", uint32(f[116]), 1},
		{"RESET_REG width", uint32(f[117]), 8},
		{"RESET_REG address", u32(120), 0x64},
		{"RESET_VALUE", uint32(f[128]), 0xfe},
		{"X_PM1a_EVT_BLK address", u32(152), 0x600},
		{"X_PM1a_EVT_BLK width", uint32(f[149]), 32},
		{"X_PM1a_CNT_BLK address", u32(176), 0x604},
		{"X_PM1a_CNT_BLK width", uint32(f[173]), 16},
	} {
		if c.got != c.want {
			t.Errorf("FADT %s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if le.Uint64(f[140:]) != uint64(u32(40)) {
		t.Errorf("X_DSDT %#x != DSDT %#x", le.Uint64(f[140:]), u32(40))
	}
	dsdt := table(t, tb, le.Uint64(f[140:]), "DSDT")
	if !bytes.Contains(dsdt[36:], []byte("\x08_S5_\x12\x08\x04\x0a\x05\x0a\x05\x00\x00")) {
		t.Errorf("DSDT body % x lacks \\_S5", dsdt[36:])
	}
	facsAddr := uint64(u32(36))
	if facsAddr%64 != 0 || le.Uint64(f[132:]) != facsAddr {
		t.Errorf("FACS at %#x (X_FIRMWARE_CTRL %#x)", facsAddr, le.Uint64(f[132:]))
	}
	facs := tb.Data[facsAddr-tb.Base:]
	if string(facs[:4]) != "FACS" || le.Uint32(facs[4:]) != 64 {
		t.Errorf("FACS header % x", facs[:8])
	}
}

func checkMADT(t *testing.T, m []byte, cpus int) {
	t.Helper()
	if le.Uint32(m[36:]) != 0xfee00000 || le.Uint32(m[40:]) != 1 {
		t.Errorf("MADT LAPIC address %#x flags %#x", le.Uint32(m[36:]), le.Uint32(m[40:]))
	}
	var apics []byte
	var got []string
	for p := m[44:]; len(p) > 0; p = p[p[1]:] {
		if len(p) < 2 || p[1] < 2 || int(p[1]) > len(p) {
			t.Fatalf("bad MADT entry % x", p)
		}
		switch p[0] {
		case 0:
			if int(p[2]) != len(apics) || le.Uint32(p[4:]) != 1 {
				t.Errorf("local APIC entry % x", p[:8])
			}
			apics = append(apics, p[3])
		case 1:
			if p[1] != 12 || int(p[2]) != cpus || le.Uint32(p[4:]) != 0xfec00000 || le.Uint32(p[8:]) != 0 {
				t.Errorf("IOAPIC entry % x", p[:12])
			}
			got = append(got, "ioapic")
		case 2:
			got = append(got, fmt.Sprintf("iso:%d:%d:%#x", p[3], le.Uint32(p[4:]), le.Uint16(p[8:])))
		case 4:
			if p[2] != 0xff || p[5] != 1 {
				t.Errorf("LAPIC NMI entry % x", p[:6])
			}
			got = append(got, "nmi")
		default:
			t.Errorf("unexpected MADT entry type %d", p[0])
		}
	}
	if len(apics) != cpus {
		t.Errorf("%d local APICs, want %d", len(apics), cpus)
	}
	for i, id := range apics {
		if int(id) != i {
			t.Errorf("processor %d has APIC ID %d", i, id)
		}
	}
	const want = "ioapic iso:9:9:0xd nmi"
	if s := strings.Join(got, " "); s != want {
		t.Errorf("MADT entries %q, want %q", s, want)
	}
}

func TestBuildRefuses(t *testing.T) {
	for _, tc := range []struct {
		base uint64
		cpus int
	}{
		{0xe0000, 0}, {0xe0000, 256}, {0xe0010, 1}, {1<<32 - 64, 1},
	} {
		if _, err := Build(tc.base, tc.cpus, Devices{}); err == nil {
			t.Errorf("Build(%#x, %d) succeeded", tc.base, tc.cpus)
		}
	}
}
