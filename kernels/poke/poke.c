/*
 * poke: misbehaves harmlessly; the VMM must survive it.
 *
 * Byte, word and dword OUT and IN on ports no device claims (0x200-0x2ff,
 * 0x3e0-0x3ef; plus unaligned word and dword accesses at 0x201, 0x203,
 * 0x2fd, 0x3e1, 0x3e7, whose values are not checked), PCI configuration cycles through
 * 0xcf8/0xcfc addressed to a device that cannot exist (bus 255, device 31,
 * function 7), and reads and writes of unclaimed MMIO in the 32-bit PCI hole
 * (0xD0000000, 0xE0001000, 0xF0000000, 0xFBFFF000, of each 1, 2 and 4
 * bytes). Port reads must return all ones, as on a PC bus and under QEMU;
 * MMIO read values are not checked (QEMU returns 0, hardware all ones).
 * Success prints "poke: still alive after N accesses".
 *
 * Debug-exit values:
 *   0  alive, every port read returned all ones
 *   1  some port read did not: "poke: in<size> 0xPORT = 0xV, want 0xW"
 */
#include "kernel.h"

#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc
#define PCI_NOWHERE 0x80fffff0u /* enable | bus 255 | dev 31 | fn 7 | reg 0xf0 */

static uint32_t accesses, failures;

static void expect(const char *what, uint32_t port, uint32_t got, uint32_t want)
{
	if (got == want)
		return;
	if (failures++ < 8)
		kprintf("poke: %s 0x%x = 0x%x, want 0x%x\n", what, port, got, want);
}

static void poke_port(uint16_t p, int width)
{
	switch (width) {
	case 1:
		outb(p, 0x5a);
		expect("inb", p, inb(p), 0xff);
		break;
	case 2:
		outw(p, 0x5aa5);
		expect("inw", p, inw(p), 0xffff);
		break;
	case 4:
		outl(p, 0x5aa5c33c);
		expect("inl", p, inl(p), 0xffffffff);
		break;
	}
	accesses += 2;
}

static void poke_mmio(uintptr_t a)
{
	volatile uint8_t *b = (volatile uint8_t *)a;
	volatile uint16_t *w = (volatile uint16_t *)a;
	volatile uint32_t *l = (volatile uint32_t *)a;
	*b = 0x5a;
	(void)*b;
	*w = 0x5aa5;
	(void)*w;
	*l = 0x5aa5c33c;
	(void)*l;
	(void)b[3];      /* a narrow read inside the word */
	w[1] = 0xa55a;   /* and a narrow write */
	accesses += 8;
}

void kmain(uint32_t magic, uint32_t mbi)
{
	static const struct { uint16_t first, last; } ranges[] = {
		{0x200, 0x2ff},
		{0x3e0, 0x3ef},
	};
	static const uint16_t unaligned[] = {0x201, 0x203, 0x2fd, 0x3e1, 0x3e7};
	static const uintptr_t mmio[] = {0xD0000000, 0xE0001000, 0xF0000000, 0xFBFFF000};

	(void)magic;
	(void)mbi;
	serial_init();
	kprintf("poke: poking unclaimed ports and MMIO\n");

	for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++)
		for (uint32_t p = ranges[r].first; p <= ranges[r].last; p++) {
			poke_port((uint16_t)p, 1);
			if (p % 2 == 0)
				poke_port((uint16_t)p, 2);
			if (p % 4 == 0)
				poke_port((uint16_t)p, 4);
		}
	/* Unaligned wide accesses: QEMU reads 0 here, so only survive them. */
	for (size_t i = 0; i < sizeof unaligned / sizeof unaligned[0]; i++) {
		uint16_t p = unaligned[i];
		outw(p, 0x5aa5);
		(void)inw(p);
		outl(p, 0x5aa5c33c);
		(void)inl(p);
		accesses += 4;
	}

	/*
	 * With or without a PCI host bridge, configuration reads of a function
	 * that does not exist return all ones. 0xcf8 itself is not checked: a
	 * bridge latches it.
	 */
	outl(PCI_ADDR, PCI_NOWHERE);
	expect("inl", PCI_DATA, inl(PCI_DATA), 0xffffffff);
	expect("inw", PCI_DATA + 2, inw(PCI_DATA + 2), 0xffff);
	expect("inb", PCI_DATA + 1, inb(PCI_DATA + 1), 0xff);
	outl(PCI_DATA, 0x5aa5c33c);
	(void)inl(PCI_ADDR);
	outl(PCI_ADDR, 0);
	accesses += 7;

	for (size_t i = 0; i < sizeof mmio / sizeof mmio[0]; i++)
		poke_mmio(mmio[i]);

	kprintf("poke: still alive after %u accesses\n", accesses);
	if (failures) {
		kprintf("poke: %u port reads were not all ones\n", failures);
		debug_exit(1);
	}
	debug_exit(0);
}
