/*
 * timer: checks that the PIT, the 8259 PIC and the LAPIC timer keep
 * delivering interrupts (also across a snapshot and restore).
 *
 * It loads an IDT, remaps the PIC to vectors 0x20-0x2f with only IRQ0
 * unmasked, programs PIT channel 0 as a rate generator at ~1000 Hz
 * (divisor 1193), software-enables the LAPIC (0xFEE00000; spurious vector
 * 0xff), sets LINT0 to ExtINT so the PIC reaches the CPU, and starts the
 * LAPIC timer periodic on vector 0x40, divide by 16, initial count 62500
 * (~1000 Hz with KVM's and QEMU's 1 GHz APIC bus). The handlers count ticks
 * and send EOI. The main loop runs `sti; hlt` and prints
 * "timer: pit=P lapic=L" each time the PIT count passes a multiple of 100,
 * until both counts reach ticks=N; then "timer: done pit=P lapic=L".
 *
 * A counter that stops is reported: the loop looks at the counts every
 * 0.5 s of TSC time (1.5*10^9 ticks, 0.5 s at 3 GHz) and, after 4 such
 * windows in a row in which the PIT or the LAPIC count did not move, prints
 * "timer: STALLED pit=P lapic=L". Counting windows rather than comparing
 * with a timestamp means one jump of the TSC (a restore on another host)
 * cannot fake a stall. With `hlt`, a stall of both timers at once leaves the
 * CPU halted for good (nothing wakes it); poll=1 spins instead of halting,
 * so that such a stall is reported too.
 *
 * Command line:
 *   ticks=N   target count for both counters (default 1000)
 *   count=N   LAPIC timer initial count (default 62500)
 *   poll=1    spin with interrupts on instead of `hlt`
 *
 * Debug-exit values:
 *   0  both counts reached N: "timer: done pit=P lapic=L"
 *   1  "timer: STALLED pit=P lapic=L"
 *   2  malformed command line ("timer: bad ticks=" etc.)
 *   3  an unexpected interrupt or exception: "timer: TRAP vector V"
 */
#include "kernel.h"

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xA0
#define PIC2_DATA 0xA1
#define PIT_CH0 0x40
#define PIT_MODE 0x43
#define PIT_DIVISOR 1193 /* 1193182 Hz / 1193 = 1000.15 Hz */

#define LAPIC_BASE 0xFEE00000u
#define LAPIC_SVR 0x0F0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV 0x3E0
#define LVT_PERIODIC (1u << 17)
#define LVT_EXTINT (7u << 8)
#define LVT_NMI (4u << 8)

#define VEC_PIT 0x20
#define VEC_LAPIC 0x40
#define VEC_SPURIOUS 0xff

#define WINDOW_TICKS 1500000000ull
#define STALL_WINDOWS 4

volatile uint32_t pit_ticks, lapic_ticks; /* isr.S */

extern const char pit_isr[], lapic_isr[], spurious_isr[], spurious_isr_slave[];
extern const char trap_stubs[];

static void load_idt(void)
{
	for (int v = 0; v < 256; v++)
		idt_set(v, trap_stubs + 16 * v);
	idt_set(VEC_PIT, pit_isr);
	idt_set(0x27, spurious_isr);       /* PIC master spurious IRQ7 */
	idt_set(0x2f, spurious_isr_slave); /* PIC slave spurious IRQ15 */
	idt_set(VEC_LAPIC, lapic_isr);
	idt_set(VEC_SPURIOUS, spurious_isr);
	idt_load();
}

void trap(uint32_t vector)
{
	kprintf("timer: TRAP vector %u\n", vector);
	debug_exit(3);
}

static void pic_init(void)
{
	outb(PIC1_CMD, 0x11); /* ICW1: edge, cascade, ICW4 */
	outb(PIC2_CMD, 0x11);
	outb(PIC1_DATA, 0x20); /* ICW2: vector bases */
	outb(PIC2_DATA, 0x28);
	outb(PIC1_DATA, 0x04); /* ICW3: slave on IRQ2 */
	outb(PIC2_DATA, 0x02);
	outb(PIC1_DATA, 0x01); /* ICW4: 8086 mode */
	outb(PIC2_DATA, 0x01);
	outb(PIC1_DATA, 0xfe); /* only IRQ0 */
	outb(PIC2_DATA, 0xff);
}

static void pit_init(void)
{
	outb(PIT_MODE, 0x34); /* channel 0, lobyte/hibyte, mode 2, binary */
	outb(PIT_CH0, PIT_DIVISOR & 0xff);
	outb(PIT_CH0, PIT_DIVISOR >> 8);
}

static void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(LAPIC_BASE + reg, v); }

static void lapic_init(uint32_t count)
{
	lapic_write(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
	lapic_write(LAPIC_LVT_LINT0, LVT_EXTINT);
	lapic_write(LAPIC_LVT_LINT1, LVT_NMI);
	lapic_write(LAPIC_TIMER_DIV, 0x3); /* divide by 16 */
	lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | VEC_LAPIC);
	lapic_write(LAPIC_TIMER_INIT, count);
}

static bool arg(const char *cmdline, const char *key, uint64_t *v, uint64_t maxv)
{
	const char *s;
	size_t n;
	if (!cmdline_get(cmdline, key, &s, &n))
		return true;
	if (parse_u64(s, n, v) && *v <= maxv)
		return true;
	kprintf("timer: bad %s=\n", key);
	return false;
}

void kmain(uint32_t magic, uint32_t mbi)
{
	struct boot b;
	uint64_t ticks = 1000, count = 62500, poll = 0;

	serial_init();
	boot_parse(magic, mbi, &b);
	if (!arg(b.cmdline, "ticks", &ticks, 0x7fffffff) || !arg(b.cmdline, "count", &count, 0xffffffff) ||
	    !arg(b.cmdline, "poll", &poll, 1))
		debug_exit(2);
	if (count == 0) {
		kprintf("timer: bad count=\n");
		debug_exit(2);
	}
	kprintf("timer: ticks=%llu count=%llu %s\n", (unsigned long long)ticks, (unsigned long long)count,
		poll ? "poll" : "hlt");

	load_idt();
	pic_init();
	pit_init();
	lapic_init((uint32_t)count);
	__asm__ volatile("sti");

	uint32_t next_print = 100;
	uint32_t wp = pit_ticks, wl = lapic_ticks, idle_pit = 0, idle_lapic = 0;
	uint64_t w0 = rdtsc();
	for (;;) {
		if (poll)
			cpu_relax();
		else
			__asm__ volatile("sti; hlt" ::: "memory");
		uint32_t p = pit_ticks, l = lapic_ticks;
		if (p >= next_print) {
			kprintf("timer: pit=%u lapic=%u\n", p, l);
			next_print = p - p % 100 + 100;
		}
		if (p >= ticks && l >= ticks) {
			kprintf("timer: done pit=%u lapic=%u\n", p, l);
			debug_exit(0);
		}
		uint64_t now = rdtsc();
		if (now - w0 < WINDOW_TICKS)
			continue;
		idle_pit = p == wp ? idle_pit + 1 : 0;
		idle_lapic = l == wl ? idle_lapic + 1 : 0;
		wp = p;
		wl = l;
		w0 = now;
		if (idle_pit >= STALL_WINDOWS || idle_lapic >= STALL_WINDOWS) {
			kprintf("timer: STALLED pit=%u lapic=%u\n", p, l);
			debug_exit(1);
		}
	}
}
