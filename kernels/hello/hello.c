/*
 * hello: the smallest boot test.
 *
 * Prints "hello from sfvmm" and "cmdline: <multiboot command line>", then
 * exits through isa-debug-exit.
 *
 * Debug-exit value: N from "exit=N" on the command line (default 0, at most
 * 127 so that the process status (N<<1)|1 fits in 8 bits): exit=3 gives
 * status 7. A malformed exit= value exits with 127.
 */
#include "kernel.h"

void kmain(uint32_t magic, uint32_t mbi)
{
	struct boot b;

	serial_init();
	boot_parse(magic, mbi, &b);
	kprintf("hello from sfvmm\n");
	if (!b.multiboot)
		kprintf("hello: not started by a multiboot loader (eax=0x%x)\n", magic);
	kprintf("cmdline: %s\n", b.cmdline);

	uint64_t code = 0;
	const char *v;
	size_t n;
	if (cmdline_get(b.cmdline, "exit", &v, &n) && (!parse_u64(v, n, &code) || code > 127)) {
		kprintf("hello: bad exit value\n");
		code = 127;
	}
	debug_exit((uint8_t)code);
}
