/*
 * counter: prints "count N" for N = 1, 2, 3, ... with a busy delay between
 * lines, so that a test can snapshot the VM at any moment, restore it in
 * another process and check that the numbers go on with no gap and no
 * repeat.
 *
 * Command line (multiboot, "key=value" words anywhere):
 *   max=N     stop after printing "count N" (default 0: never stop)
 *   period=T  pace lines T TSC ticks apart (default 2500000: 1000 lines/s
 *             at a 2.5 GHz TSC; a line that takes longer to print than T,
 *             as under an instruction-emulating KVM, just follows at once)
 *   delay=N   instead of period=, N dec/jnz iterations between lines
 *             (delay=0: as fast as the serial port goes)
 *
 * Each line is exactly "count N\n" (sent as "count N\r\n"), N in decimal
 * with no leading zeros, 64-bit. Nothing else is printed unless the
 * command line is malformed.
 *
 * Debug-exit values:
 *   0  printed "count MAX" (max=N reached)
 *   2  malformed max=, period= or delay= ("counter: bad KEY=")
 */
#include "kernel.h"

#define DEFAULT_PERIOD 2500000u

static bool arg(const char *cmdline, const char *key, uint64_t *v, bool *given)
{
	const char *s;
	size_t n;
	if (!cmdline_get(cmdline, key, &s, &n))
		return true;
	if (given)
		*given = true;
	if (parse_u64(s, n, v))
		return true;
	kprintf("counter: bad %s=\n", key);
	return false;
}

void kmain(uint32_t magic, uint32_t mbi)
{
	struct boot b;
	uint64_t max = 0, period = DEFAULT_PERIOD, delay = 0;
	bool loops = false;

	serial_init();
	boot_parse(magic, mbi, &b);
	if (!arg(b.cmdline, "max", &max, NULL) || !arg(b.cmdline, "period", &period, NULL) ||
	    !arg(b.cmdline, "delay", &delay, &loops))
		debug_exit(2);
	uint64_t t = rdtsc();
	for (uint64_t n = 1;; n++) {
		kprintf("count %llu\n", (unsigned long long)n);
		if (max && n >= max)
			debug_exit(0);
		if (loops)
			spin_loops(delay);
		else
			tsc_wait_until(&t, period);
	}
}
