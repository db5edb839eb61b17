/*
 * memtest: writes and verifies guest RAM from 16 MiB up.
 *
 * Command line: size=N[K|M|G] (default 64M). The region [16 MiB, 16 MiB+N)
 * must lie below the RAM top that both fw_cfg (RAM size, key 0x0003) and
 * multiboot (1 MiB + mem_upper KiB) report, whichever are present. Each
 * 32-bit word gets its own address xor a seed, so a VMM that maps two guest
 * pages onto one host page, or drops writes, is caught on verify.
 * Success prints "memtest: ok N bytes".
 *
 * Debug-exit values:
 *   0  the region verified
 *   1  mismatch: "memtest: mismatch at 0xADDR: read 0xX, want 0xY"
 *   2  the region does not fit in RAM, or no RAM size is known
 *   3  malformed size= value
 */
#include "kernel.h"

#define BASE 0x1000000ull /* 16 MiB: far above the kernel at 1 MiB */
#define SEED 0x5aa5c33cu
#define LIMIT 0x100000000ull /* paging is off: 32-bit physical addresses */

void kmain(uint32_t magic, uint32_t mbi)
{
	struct boot b;
	uint64_t size = 64ull << 20, fw_ram = 0, top = LIMIT;
	const char *s;
	size_t len;

	serial_init();
	boot_parse(magic, mbi, &b);
	if (cmdline_get(b.cmdline, "size", &s, &len) && !parse_size(s, len, &size)) {
		kprintf("memtest: bad size\n");
		debug_exit(3);
	}
	size &= ~3ull;

	bool have_fw = fwcfg_ram_size(&fw_ram);
	if (have_fw) {
		kprintf("memtest: fw_cfg ram size %llu bytes\n", fw_ram);
		if (fw_ram < top)
			top = fw_ram;
	}
	if (b.has_mem) {
		uint64_t mb_top = 0x100000ull + (uint64_t)b.mem_upper * 1024;
		kprintf("memtest: multiboot mem_lower %u KiB, mem_upper %u KiB\n", b.mem_lower, b.mem_upper);
		if (mb_top < top)
			top = mb_top;
	}
	if (!have_fw && !b.has_mem) {
		kprintf("memtest: no RAM size from fw_cfg or multiboot\n");
		debug_exit(2);
	}
	if (BASE + size > top) {
		kprintf("memtest: %llu bytes at 16 MiB do not fit in RAM (top 0x%llx)\n", size, top);
		debug_exit(2);
	}

	kprintf("memtest: testing [0x%llx, 0x%llx)\n", BASE, BASE + size);
	volatile uint32_t *p = (volatile uint32_t *)(uintptr_t)BASE;
	uint32_t words = (uint32_t)(size / 4);
	for (uint32_t i = 0; i < words; i++)
		p[i] = (uint32_t)(uintptr_t)&p[i] ^ SEED;
	for (uint32_t i = 0; i < words; i++) {
		uint32_t want = (uint32_t)(uintptr_t)&p[i] ^ SEED, got = p[i];
		if (got != want) {
			kprintf("memtest: mismatch at 0x%x: read 0x%08x, want 0x%08x\n",
				(uint32_t)(uintptr_t)&p[i], got, want);
			debug_exit(1);
		}
	}
	kprintf("memtest: ok %llu bytes\n", size);
	debug_exit(0);
}
