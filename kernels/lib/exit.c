/* isa-debug-exit and halting. */
#include "kernel.h"

void halt(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

/*
 * debug_exit ends the VM: QEMU's isa-debug-exit and sfvmm exit with status
 * (value<<1)|1. A byte write works whatever iosize the device was given.
 * Without the device the write goes nowhere and we halt.
 */
void debug_exit(uint8_t value)
{
	outb(DEBUG_EXIT_PORT, value);
	halt();
}
