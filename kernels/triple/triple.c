/*
 * triple: ends in a triple fault, which the VMM must report.
 *
 * Prints "triple: faulting now", loads an IDT with limit 0 and executes
 * int3: the #BP cannot be delivered (#GP), neither can the #GP (#DF) nor the
 * #DF, so the CPU shuts down. KVM reports KVM_EXIT_SHUTDOWN; QEMU with
 * -no-reboot exits with status 0.
 *
 * Debug-exit value: 1 if the CPU somehow survives ("triple: still alive").
 */
#include "kernel.h"

void kmain(uint32_t magic, uint32_t mbi)
{
	static const struct __attribute__((packed)) {
		uint16_t limit;
		uint32_t base;
	} empty_idt = {0, 0};

	(void)magic;
	(void)mbi;
	serial_init();
	kprintf("triple: faulting now\n");
	__asm__ volatile("lidt %0; int3" : : "m"(empty_idt));
	kprintf("triple: still alive\n");
	debug_exit(1);
}
