/*
 * lmboot: a multiboot kernel that stands in for sfvmm's long-mode loader
 * under QEMU, so that longmode.elf can be checked there:
 *
 *   qemu-system-x86_64 -kernel lmboot.elf \
 *       -device loader,file=longmode.elf ...
 *
 * QEMU's loader device puts longmode.elf's segments in RAM; lmboot builds
 * the state sfvmm promises (low 4 GiB identity-mapped with 2 MiB pages,
 * flat 64-bit CS, interrupts off, RSP set, RSI = 0) and jumps to
 * LONGMODE_ENTRY. Not a test kernel itself; not used by sfvmm.
 *
 * Debug-exit values: whatever longmode.elf exits with.
 */
#include "kernel.h"

#define LONGMODE_ENTRY 0x200000u

static uint64_t pml4[512] __attribute__((aligned(4096)));
static uint64_t pdpt[512] __attribute__((aligned(4096)));
static uint64_t pd[4][512] __attribute__((aligned(4096)));

void enter_long_mode(uint32_t pml4, uint32_t entry) __attribute__((noreturn));

void kmain(uint32_t magic, uint32_t mbi)
{
	(void)magic;
	(void)mbi;
	serial_init();
	for (uint32_t i = 0; i < 4; i++) {
		pdpt[i] = (uint32_t)(uintptr_t)pd[i] | 0x3;              /* present, writable */
		for (uint32_t j = 0; j < 512; j++)
			pd[i][j] = ((uint64_t)i << 30) | ((uint64_t)j << 21) | 0x83; /* 2 MiB page */
	}
	pml4[0] = (uint32_t)(uintptr_t)pdpt | 0x3;
	kprintf("lmboot: entering long mode at 0x%x\n", LONGMODE_ENTRY);
	enter_long_mode((uint32_t)(uintptr_t)pml4, LONGMODE_ENTRY);
}
