/* The multiboot v1 information structure (the fields we read). */
#include "kernel.h"

#define MBI_FLAG_MEM (1u << 0)
#define MBI_FLAG_CMDLINE (1u << 2)

struct multiboot_info {
	uint32_t flags;
	uint32_t mem_lower;
	uint32_t mem_upper;
	uint32_t boot_device;
	uint32_t cmdline;
};

/* mbi is a physical address; 32-bit kernels run with paging off. */
void boot_parse(uint32_t magic, uint32_t mbi, struct boot *b)
{
	*b = (struct boot){.cmdline = ""};
	if (magic != MULTIBOOT_BOOTLOADER_MAGIC || mbi == 0)
		return;
	const volatile struct multiboot_info *mi = (const void *)(uintptr_t)mbi;
	b->multiboot = true;
	if (mi->flags & MBI_FLAG_MEM) {
		b->has_mem = true;
		b->mem_lower = mi->mem_lower;
		b->mem_upper = mi->mem_upper;
	}
	if ((mi->flags & MBI_FLAG_CMDLINE) && mi->cmdline)
		b->cmdline = (const char *)(uintptr_t)mi->cmdline;
}
