/* idt.c: the interrupt descriptor table of 32-bit kernels. */
#include "kernel.h"

#ifdef __i386__
struct gate {
	uint16_t off_lo, sel;
	uint8_t zero, type;
	uint16_t off_hi;
} __attribute__((packed));

static struct gate idt[256] __attribute__((aligned(8)));

void idt_set(int vector, const void *handler)
{
	uint32_t a = (uint32_t)(uintptr_t)handler;
	/* Selector 0x08: entry32.S's flat code segment; 0x8E: present ring-0 interrupt gate. */
	idt[vector] = (struct gate){.off_lo = (uint16_t)a, .sel = 0x08, .type = 0x8E, .off_hi = (uint16_t)(a >> 16)};
}

void idt_load(void)
{
	struct {
		uint16_t limit;
		uint32_t base;
	} __attribute__((packed)) p = {sizeof idt - 1, (uint32_t)(uintptr_t)idt};
	__asm__ volatile("lidt %0" : : "m"(p));
}
#endif
