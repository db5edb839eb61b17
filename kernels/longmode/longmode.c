/*
 * longmode: checks that the VMM entered it in 64-bit long mode.
 *
 * An ELF64 kernel with no multiboot header: sfvmm loads it and starts it
 * directly in long mode (see entry64.S). It checks EFER.LMA (MSR
 * 0xC0000080 bit 10), CR0.PG and CR4.PAE, and a 64-bit multiply whose
 * result needs more than 32 bits, then prints "long mode: ok". It cannot
 * boot under `qemu -kernel` (QEMU refuses ELF64 multiboot images); lmboot.elf
 * stands in for the VMM's loader there.
 *
 * Debug-exit values:
 *   0  all checks passed
 *   1  a check failed: "long mode: FAIL <what>"
 */
#include "kernel.h"

#define MSR_EFER 0xC0000080u
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)

static uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}

static bool check(bool ok, const char *what)
{
	if (!ok)
		kprintf("long mode: FAIL %s\n", what);
	return ok;
}

void kmain64(uint64_t loader_rsp, uint64_t loader_rsi)
{
	uint64_t efer = rdmsr(MSR_EFER), cr0, cr4;
	__asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
	__asm__ volatile("mov %%cr4, %0" : "=r"(cr4));

	serial_init();
	kprintf("long mode: efer=0x%llx cr0=0x%llx cr4=0x%llx rsp=0x%llx rsi=0x%llx\n",
		(unsigned long long)efer, (unsigned long long)cr0, (unsigned long long)cr4,
		(unsigned long long)loader_rsp, (unsigned long long)loader_rsi);

	/* volatile: the compiler must not fold the multiply at build time */
	volatile uint64_t a = 0x123456789ull, b = 0xabcdefull;
	uint64_t p = a * b;

	bool ok = true;
	ok &= check(efer & EFER_LMA, "EFER.LMA is clear");
	ok &= check(efer & EFER_LME, "EFER.LME is clear");
	ok &= check(cr0 & (1ull << 31), "CR0.PG is clear");
	ok &= check(cr4 & (1ull << 5), "CR4.PAE is clear");
	ok &= check(p == 0xc379aaaa375de7ull && p > 0xffffffffull, "64-bit multiply");
	if (!ok)
		debug_exit(1);
	kprintf("long mode: ok\n");
	debug_exit(0);
}
