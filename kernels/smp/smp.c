/*
 * smp: starts every AP and waits for each to check in.
 *
 * The CPU count comes from fw_cfg (key 0x0005), or from "cpus=N" on the
 * command line, which wins. The BSP broadcasts INIT, SIPI, SIPI through its
 * xAPIC (0xFEE00000) to all but itself; each AP runs the real-mode
 * trampoline copied to 0x8000, enters protected mode, takes its own stack
 * and prints "cpu N online" (N: its LAPIC ID). The BSP prints the same line
 * for itself, waits until all N have checked in and prints
 * "smp: N of N cpus online". The wait is bounded by the TSC (10^10 ticks:
 * about 3 s at 3 GHz), so it does not depend on how fast the CPU executes.
 *
 * Debug-exit values:
 *   0  all N CPUs checked in
 *   1  timeout: "smp: only K of N cpus"
 *   3  no CPU count (no fw_cfg and no cpus=) or N > 64
 */
#include "kernel.h"
#include "smp.h"

#define LAPIC_BASE 0xFEE00000u
#define LAPIC_ID 0x020
#define LAPIC_SVR 0x0F0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_BUSY (1u << 12)
#define ICR_ALL_BUT_SELF (3u << 18)
#define ICR_ASSERT (1u << 14)
#define ICR_INIT (5u << 8)
#define ICR_STARTUP (6u << 8)

#define TIMEOUT_TICKS 10000000000ull
#define INIT_DELAY_TICKS 30000000ull /* >= 10 ms up to 3 GHz */
#define SIPI_DELAY_TICKS 1000000ull  /* >= 200 us up to 5 GHz */

extern const char trampoline_start[], trampoline_end[];

/* Used by trampoline.S. */
uint8_t ap_stacks[MAX_CPUS][AP_STACK_SIZE] __attribute__((aligned(16)));
uint32_t ap_next_stack;

static uint32_t online; /* CPUs checked in; atomic */
static uint32_t print_lock;

static uint32_t lapic_read(uint32_t reg) { return mmio_read32(LAPIC_BASE + reg); }
static void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(LAPIC_BASE + reg, v); }

static void lock(uint32_t *l)
{
	while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
		cpu_relax();
}

static void unlock(uint32_t *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

static void say_online(void)
{
	uint32_t id = lapic_read(LAPIC_ID) >> 24;
	lock(&print_lock);
	kprintf("cpu %u online\n", id);
	unlock(&print_lock);
	__atomic_fetch_add(&online, 1, __ATOMIC_RELEASE);
}

void ap_main(void)
{
	say_online();
	halt();
}

static void delay(uint64_t ticks)
{
	uint64_t t0 = rdtsc();
	while (rdtsc() - t0 < ticks)
		cpu_relax();
}

static void send_ipi(uint32_t icr)
{
	lapic_write(LAPIC_ICR_HI, 0);
	lapic_write(LAPIC_ICR_LO, icr);
	for (int i = 0; i < 1000000 && (lapic_read(LAPIC_ICR_LO) & ICR_BUSY); i++)
		cpu_relax();
}

static void memcopy(void *dst, const void *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		((volatile uint8_t *)dst)[i] = ((const uint8_t *)src)[i];
}

void kmain(uint32_t magic, uint32_t mbi)
{
	struct boot b;
	uint32_t n = 0;
	uint64_t v;
	const char *s;
	size_t len;

	serial_init();
	boot_parse(magic, mbi, &b);
	if (cmdline_get(b.cmdline, "cpus", &s, &len) && parse_u64(s, len, &v) && v <= 0xffff) {
		n = (uint32_t)v;
		kprintf("smp: %u cpus (command line)\n", n);
	} else if (fwcfg_cpus(&n)) {
		kprintf("smp: %u cpus (fw_cfg)\n", n);
	}
	if (n == 0 || n > MAX_CPUS) {
		kprintf("smp: cannot start %u cpus (no fw_cfg, no cpus=, or more than %u)\n", n, MAX_CPUS);
		debug_exit(3);
	}

	lapic_write(LAPIC_SVR, 0x1ff); /* software-enable the BSP's LAPIC */
	say_online();
	if (n > 1) {
		memcopy((void *)TRAMPOLINE_ADDR, trampoline_start, (size_t)(trampoline_end - trampoline_start));
		send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT);
		delay(INIT_DELAY_TICKS);
		for (int i = 0; i < 2; i++) {
			send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | (TRAMPOLINE_ADDR >> 12));
			delay(SIPI_DELAY_TICKS);
		}
	}

	uint64_t t0 = rdtsc();
	while (__atomic_load_n(&online, __ATOMIC_ACQUIRE) < n && rdtsc() - t0 < TIMEOUT_TICKS)
		cpu_relax();

	uint32_t k = __atomic_load_n(&online, __ATOMIC_ACQUIRE);
	lock(&print_lock);
	if (k >= n) {
		kprintf("smp: %u of %u cpus online\n", k, n);
		debug_exit(0);
	}
	kprintf("smp: only %u of %u cpus\n", k, n);
	debug_exit(1);
}
