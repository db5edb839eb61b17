//go:build kvm

package tests

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sfvmm/sfvmm/vmm/vmtest"
)

// qemuKernelSource is a multiboot kernel as people write them for
// `qemu -kernel`: one C file, no linker script. The header goes in .text,
// which ld places in the file's second page, well inside the 8 KiB that
// loaders search. It prints a line on COM1 and leaves through
// isa-debug-exit with 0x2a when it was entered with the multiboot magic.
const qemuKernelSource = `
__asm__(".pushsection .text\n"
	".align 4\n"
	".long 0x1badb002, 0x3, -(0x1badb002 + 0x3)\n"
	".globl _start\n"
	"_start:\n"
	"movl $stack + 4096, %esp\n"
	"pushl %eax\n"
	"call kmain\n"
	".popsection\n");

unsigned char stack[4096] __attribute__((aligned(16)));

static inline void outb(unsigned short port, unsigned char v) {
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}
static inline unsigned char inb(unsigned short port) {
	unsigned char v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static void puts(const char *s) {
	for (; *s; s++) {
		while (!(inb(0x3f8 + 5) & 0x20))
			;
		outb(0x3f8, *s);
	}
}

void kmain(unsigned magic) {
	puts("hello from a gcc multiboot kernel\n");
	outb(0xf4, magic == 0x2badb002 ? 0x2a : 0x01);
	for (;;)
		__asm__ volatile("cli; hlt");
}
`

// qemuKernelStatus is what QEMU 7.2 (Debian 12) exits with for that kernel
// (`qemu-system-x86_64 -accel tcg -kernel k.elf -device
// isa-debug-exit,iobase=0xf4,iosize=0x04 -display none -serial stdio
// -nodefaults`): (0x2a<<1)|1.
const qemuKernelStatus = 85

// TestQEMUStyleMultiboot boots a kernel built the way a `qemu -kernel` test
// image usually is, with the system gcc and no linker script. Such a link
// puts the ELF headers in a read-only segment of their own at 0xff000,
// under sfvmm's MP and ACPI tables, and (with Debian's default --build-id)
// the build-id note in a segment at 0x08048000, past the end of 128 MiB of
// RAM. QEMU runs it; so must sfvmm, with the same RAM and the same status.
func TestQEMUStyleMultiboot(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc (make deps installs it): %v", err)
	}
	dir := t.TempDir()
	src, kernel := filepath.Join(dir, "k.c"), filepath.Join(dir, "k.elf")
	if err := os.WriteFile(src, []byte(qemuKernelSource), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(gcc, "-m32", "-nostdlib", "-static", "-ffreestanding", "-fno-pic", "-no-pie",
		"-Wl,-Ttext=0x100000", "-o", kernel, src)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd, err, out)
	}

	// The test means something only while the link puts a segment below
	// 1 MiB, in the BIOS area.
	f, err := elf.Open(kernel)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var loads []*elf.Prog
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			loads = append(loads, p)
		}
	}
	for _, p := range loads {
		t.Logf("PT_LOAD paddr %#x filesz %#x memsz %#x flags %v", p.Paddr, p.Filesz, p.Memsz, p.Flags)
	}
	if len(loads) == 0 || loads[0].Paddr != 0xff000 {
		t.Fatalf("the first PT_LOAD is not at 0xff000: this gcc and ld lay the kernel out differently")
	}

	r := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Memory: 128 << 20})
	r.Contains(t, "hello from a gcc multiboot kernel")
	r.Status(t, qemuKernelStatus)
}
