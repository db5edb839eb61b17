/*
 * forktest: exercises sfvmm's fork device (kernels/lib/sf.h).
 *
 * Command line: mode=fork|misuse|kill|wait|ticker|rounds (default fork), clones=N
 * (default 4), size=N[K|M|G] (default 64M), cap=N (the VMM's
 * --fork-capacity, for the misuse checks; default 16).
 *
 *   fork    fills [16 MiB, 16 MiB+size) with a pattern and checksums it,
 *           forks N clones and at once overwrites the region. Each clone
 *           checks the pre-fork pattern and checksum, checks that the
 *           16 MiB after the region (never touched by the parent) reads
 *           zero, prints its ID and calls sf_exit(0). The parent joins and
 *           prints that all clones exited.
 *   wait    as fork, but the clones wait delay=N seconds (default 2) of
 *           wall-clock time (CMOS RTC) before touching the region, and
 *           the parent overwrites only its first page (which the clones,
 *           starting there, then need the memory server for): a test
 *           kills or stops the memory server meanwhile.
 *   misuse  makes every call a guest can get wrong and prints what each
 *           returned; one clone makes the parent-only calls.
 *   kill    forks 2 clones that spin for ever; the parent waits for a byte
 *           on COM1 (at most 60 s), sf_kills them and goes on.
 *   ticker  fills size bytes (default none), then prints "forktest: ticker
 *           id=ID n=N" every second for ever (or ticks=N seconds), ID
 *           being sf_id(): clones forked from the host show theirs.
 *   rounds  forks rounds=R times (default 10), N clones each: every round
 *           writes a pattern of its own over size bytes, forks, and the
 *           clones check it (so a clone whose registers and memory come
 *           from different instants fails) while the parent overwrites
 *           it; the parent prints "forktest: round R: forking" before
 *           and "forktest: round R ok" once it has joined. For tests that
 *           snapshot or pause the parent while it forks.
 *
 * Debug-exit values: 0 all as expected; 1 a clone or check failed;
 * 2 bad command line; 3 the fork device is missing or a call failed;
 * 4 a CPU exception (reported with its EIP).
 */
#include "kernel.h"
#include "sf.h"

#define BASE 0x1000000u /* 16 MiB */
#define ZERO_BYTES (16u << 20)
#define SEED 0x9e3779b9u

/* Exception entry points (trap.S): a fault reports itself. */
extern char trap_stubs[];

void trap(uint32_t *frame) __attribute__((noreturn, used));
void trap(uint32_t *frame)
{
	kprintf("forktest: clone %d: exception %u, error 0x%x, at eip 0x%x (cs 0x%x, eflags 0x%x), esp 0x%x\n",
		sf_id(), frame[0], frame[1], frame[2], frame[3], frame[4], (uint32_t)(uintptr_t)(frame + 5));
	debug_exit(4);
}

static void load_idt(void)
{
	for (int v = 0; v < 32; v++)
		idt_set(v, trap_stubs + 16 * v);
	idt_load();
}

static uint32_t pattern(uint32_t i) { return (i * 2654435761u) ^ SEED; }

static uint32_t checksum(volatile uint32_t *p, uint32_t words)
{
	uint32_t s = 0;
	for (uint32_t i = 0; i < words; i++)
		s = (s << 5 | s >> 27) ^ p[i];
	return s;
}

/* rtc_seconds reads the CMOS clock's seconds register. */
static uint8_t rtc_seconds(void)
{
	outb(0x70, 0x00);
	return inb(0x71);
}

/* wait_seconds waits until the RTC's seconds have changed n times. */
static void wait_seconds(int n)
{
	uint8_t s = rtc_seconds();
	while (n > 0) {
		uint8_t t = rtc_seconds();
		if (t != s) {
			s = t;
			n--;
		}
	}
}

/* wait_input waits for a byte on COM1, or at most max_seconds. */
static void wait_input(int max_seconds)
{
	uint8_t s = rtc_seconds();
	while (!(inb(0x3f8 + 5) & 1) && max_seconds > 0) {
		uint8_t t = rtc_seconds();
		if (t != s) {
			s = t;
			max_seconds--;
		}
	}
	if (inb(0x3f8 + 5) & 1)
		inb(0x3f8);
}

static uint64_t arg(const char *cmdline, const char *key, uint64_t def, bool size)
{
	const char *v;
	size_t n;
	uint64_t x;
	if (!cmdline_get(cmdline, key, &v, &n))
		return def;
	if (!(size ? parse_size(v, n, &x) : parse_u64(v, n, &x))) {
		kprintf("forktest: bad %s\n", key);
		debug_exit(2);
	}
	return x;
}

static bool mode_is(const char *cmdline, const char *m)
{
	const char *v;
	size_t n;
	if (!cmdline_get(cmdline, "mode", &v, &n))
		return m[0] == 'f' && m[1] == 'o'; /* default: fork */
	size_t i = 0;
	for (; i < n && m[i]; i++)
		if (v[i] != m[i])
			return false;
	return i == n && m[i] == 0;
}

static void clone_check(int32_t id, uint32_t words, uint32_t sum, int delay)
{
	volatile uint32_t *p = (volatile uint32_t *)BASE;
	if (delay) {
		kprintf("forktest: clone %d running, touching the region in %d s\n", id, delay);
		wait_seconds(delay);
	}
	for (uint32_t i = 0; i < words; i++) {
		if (p[i] != pattern(i)) {
			kprintf("forktest: clone %d: word %u is 0x%x, want 0x%x\n", id, i, p[i], pattern(i));
			sf_exit(1);
		}
	}
	uint32_t got = checksum(p, words);
	if (got != sum) {
		kprintf("forktest: clone %d: checksum 0x%x, want 0x%x\n", id, got, sum);
		sf_exit(1);
	}
	volatile uint32_t *z = p + words;
	for (uint32_t i = 0; i < ZERO_BYTES / 4; i++) {
		if (z[i] != 0) {
			kprintf("forktest: clone %d: untouched word at 0x%x is 0x%x\n", id, (uint32_t)(uintptr_t)&z[i], z[i]);
			sf_exit(1);
		}
	}
	kprintf("forktest: clone %d: pattern ok, checksum 0x%x, untouched memory zero\n", id, got);
	sf_exit(0);
	kprintf("forktest: clone %d: sf_exit returned\n", id);
	debug_exit(1);
}

static int failures;

static void expect(const char *what, int32_t got, int32_t want)
{
	bool ok = got == want;
	if (!ok)
		failures++;
	kprintf("misuse: %s -> %d (want %d) %s\n", what, got, want, ok ? "ok" : "FAIL");
}

static void misuse(uint32_t cap)
{
	expect("parent sf_exit", sf_exit(0), SF_ENOTCHILD);
	expect("sf_join of unknown ticket", sf_join(99), SF_ENOTICKET);
	expect("sf_kill of unknown ticket", sf_kill(99), SF_ENOTICKET);
	expect("sf_clone of unknown ticket", sf_clone(99), SF_ENOTICKET);
	expect("sf_request_ticket over capacity", sf_request_ticket(cap + 1), SF_ECAPACITY);
	expect("sf_request_ticket(0)", sf_request_ticket(0), SF_EINVAL);
	expect("unknown call 77", sf_call(77, 0, 0), SF_EINVAL);
	int32_t t = sf_request_ticket(1);
	expect("sf_request_ticket(1) > 0", t > 0 ? 0 : t, 0);
	expect("sf_create_clones from unknown checkpoint", sf_create_clones(99, t), SF_ENOCHECKPT);
	int32_t id = sf_clone(t);
	if (id > 0) {
		kprintf("misuse: clone %d: sf_join -> %d, sf_kill -> %d, sf_request_ticket -> %d, sf_clone -> %d, sf_id -> %d\n",
			id, sf_join_once(t), sf_kill(t), sf_request_ticket(1), sf_clone(t), sf_id());
		sf_exit(0);
	}
	expect("sf_clone", id, 0);
	expect("second sf_clone of a used ticket", sf_clone(t), SF_ETICKETUSED);
	expect("sf_join", sf_join(t), 0);
	expect("sf_join of a joined ticket", sf_join(t), SF_ENOTICKET);
	kprintf("misuse: %d failures\n", failures);
	debug_exit(failures ? 1 : 0);
}

static void kill_mode(void)
{
	int32_t t = sf_request_ticket(2);
	int32_t id = sf_clone(t);
	if (id < 0) {
		kprintf("forktest: sf_clone: %s\n", sf_strerror(id));
		debug_exit(3);
	}
	if (id > 0) {
		kprintf("forktest: clone %d spinning\n", id);
		for (;;)
			cpu_relax();
	}
	kprintf("forktest: parent forked; waiting for input to kill\n");
	wait_input(60);
	int32_t r = sf_kill(t);
	kprintf("forktest: sf_kill -> %d\n", r);
	kprintf("forktest: sf_join after sf_kill -> %d\n", sf_join(t));
	spin_loops(1000000);
	kprintf("forktest: parent goes on after sf_kill\n");
	debug_exit(r == 0 ? 0 : 1);
}

static void ticker(uint64_t ticks, uint32_t fill)
{
	volatile uint32_t *p = (volatile uint32_t *)BASE;
	for (uint32_t i = 0; i < fill / 4; i++)
		p[i] = pattern(i);
	if (fill)
		kprintf("forktest: %u bytes written at 0x%x\n", fill, BASE);
	for (uint64_t n = 1; ticks == 0 || n <= ticks; n++) {
		wait_seconds(1);
		kprintf("forktest: ticker id=%d n=%llu\n", sf_id(), n);
	}
	debug_exit(0);
}

static void rounds(uint32_t rounds, uint32_t clones, uint32_t words)
{
	volatile uint32_t *p = (volatile uint32_t *)BASE;
	for (uint32_t r = 1; r <= rounds; r++) {
		uint32_t salt = r * 0x01010101u;
		for (uint32_t i = 0; i < words; i++)
			p[i] = pattern(i) ^ salt;
		uint32_t sum = checksum(p, words);
		kprintf("forktest: round %u: forking\n", r);
		int32_t t = sf_request_ticket(clones);
		if (t < 0) {
			kprintf("forktest: round %u: sf_request_ticket: %s\n", r, sf_strerror(t));
			debug_exit(3);
		}
		int32_t id = sf_clone(t);
		if (id < 0) {
			kprintf("forktest: round %u: sf_clone: %s\n", r, sf_strerror(id));
			debug_exit(3);
		}
		if (id > 0) {
			for (uint32_t i = 0; i < words; i++) {
				if (p[i] != (pattern(i) ^ salt)) {
					kprintf("forktest: round %u: clone %d: word %u is 0x%x, want 0x%x\n", r, id, i, p[i], pattern(i) ^ salt);
					sf_exit(1);
				}
			}
			if (checksum(p, words) != sum) {
				kprintf("forktest: round %u: clone %d: checksum differs\n", r, id);
				sf_exit(1);
			}
			kprintf("forktest: round %u: clone %d: pattern ok\n", r, id);
			sf_exit(0);
		}
		for (uint32_t i = 0; i < words; i++)
			p[i] = ~p[i];
		int32_t failed = sf_join(t);
		if (failed != 0) {
			kprintf("forktest: round %u: sf_join: %d\n", r, failed);
			debug_exit(1);
		}
		kprintf("forktest: round %u ok\n", r);
	}
	debug_exit(0);
}

void kmain(uint32_t magic, uint32_t mbi)
{
	struct boot b;
	serial_init();
	load_idt();
	boot_parse(magic, mbi, &b);
	if (!sf_probe()) {
		kprintf("forktest: no fork device at port 0x%x\n", SF_PORT);
		debug_exit(3);
	}
	if (mode_is(b.cmdline, "misuse"))
		misuse((uint32_t)arg(b.cmdline, "cap", 16, false));
	if (mode_is(b.cmdline, "kill"))
		kill_mode();
	if (mode_is(b.cmdline, "ticker"))
		ticker(arg(b.cmdline, "ticks", 0, false), (uint32_t)arg(b.cmdline, "size", 0, true));
	if (mode_is(b.cmdline, "rounds"))
		rounds((uint32_t)arg(b.cmdline, "rounds", 10, false), (uint32_t)arg(b.cmdline, "clones", 2, false),
		       (uint32_t)(arg(b.cmdline, "size", 4u << 20, true) / 4));
	bool wait = mode_is(b.cmdline, "wait");
	if (!wait && !mode_is(b.cmdline, "fork")) {
		kprintf("forktest: unknown mode\n");
		debug_exit(2);
	}
	uint32_t clones = (uint32_t)arg(b.cmdline, "clones", 4, false);
	uint32_t words = (uint32_t)(arg(b.cmdline, "size", 64u << 20, true) / 4);

	volatile uint32_t *p = (volatile uint32_t *)BASE;
	for (uint32_t i = 0; i < words; i++)
		p[i] = pattern(i);
	uint32_t sum = checksum(p, words);
	kprintf("forktest: %u bytes written at 0x%x, checksum 0x%x\n", words * 4, BASE, sum);

	int32_t t = sf_request_ticket(clones);
	if (t < 0) {
		kprintf("forktest: sf_request_ticket(%u): %s\n", clones, sf_strerror(t));
		debug_exit(3);
	}
	kprintf("forktest: ticket %d for %d clones\n", t, sf_ticket_slots(t));
	int32_t id = sf_clone(t);
	if (id < 0) {
		kprintf("forktest: sf_clone: %s\n", sf_strerror(id));
		debug_exit(3);
	}
	if (id > 0)
		clone_check(id, words, sum, wait ? (int)arg(b.cmdline, "delay", 2, false) : 0);

	kprintf("forktest: parent forked\n");
	if (wait) {
		/* Quickly, before the clones look: they then need the
		 * memory server for this page. */
		for (uint32_t i = 0; i < 1024; i++)
			p[i] = ~p[i];
		kprintf("forktest: parent overwrote the region's first page\n");
	} else {
		for (uint32_t i = 0; i < words; i++)
			p[i] = p[i] * 3 + 1;
		kprintf("forktest: parent overwrote the region, checksum now 0x%x\n", checksum(p, words));
	}
	int32_t failed = sf_join(t);
	if (failed < 0) {
		kprintf("forktest: sf_join: %s\n", sf_strerror(failed));
		debug_exit(3);
	}
	kprintf("forktest: parent joined: all %u clones exited, %d without sf_exit(0)\n", clones, failed);
	debug_exit(failed ? 1 : 0);
}
