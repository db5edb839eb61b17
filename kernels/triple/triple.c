/*
 * triple: ends in a triple fault, which the VMM must report.
 *
 * Prints "triple: faulting now", loads an IDT whose 256 gates are all
 * not-present and executes int3: the #BP gate is not present (#NP), nor is
 * the #NP gate (#DF), nor the #DF gate, so the CPU shuts down. KVM reports
 * KVM_EXIT_SHUTDOWN; QEMU with -no-reboot exits with status 0.
 *
 * Not-present gates rather than an IDT limit of 0: a limit violation raises
 * #GP, which some hosts' KVM intercepts and then cannot emulate during
 * event delivery (an internal error instead of a shutdown).
 *
 * Debug-exit value: 1 if the CPU somehow survives ("triple: still alive").
 */
#include "kernel.h"

void kmain(uint32_t magic, uint32_t mbi)
{
	static uint64_t gates[256]; /* all zero: not present */
	static struct __attribute__((packed)) {
		uint16_t limit;
		uint32_t base;
	} idt;

	(void)magic;
	(void)mbi;
	serial_init();
	idt.limit = sizeof(gates) - 1;
	idt.base = (uint32_t)gates;
	kprintf("triple: faulting now\n");
	__asm__ volatile("lidt %0; int3" : : "m"(idt));
	kprintf("triple: still alive\n");
	debug_exit(1);
}
