/*
 * fpu: checks that x87, SSE and AVX register state survives (a snapshot and
 * restore of the VM, for one).
 *
 * An ELF64 kernel entered in long mode like longmode.elf (same entry and
 * link address, 0x200000). It enables SSE (CR0.MP set, CR0.EM and CR0.TS
 * clear, CR4.OSFXSR|OSXMMEXCPT) and, when CPUID.1 reports AVX and XSAVE and
 * CPUID.0xD allows x87|SSE|AVX, AVX too (CR4.OSXSAVE, XSETBV XCR0 = 7). It
 * loads distinct values into ST0-ST7 (80-bit normals), xmm0-15 and, with
 * AVX, the upper halves of ymm0-15, with x87 control word 0x067f (53-bit
 * precision, round down) and MXCSR 0xff80 (flush-to-zero, round toward
 * zero, exceptions masked), all with one FXRSTOR (plus VINSERTF128 for the
 * ymm halves). Then it loops: wait, FXSAVE (and VEXTRACTF128 of the ymm
 * upper halves) without changing a register, compare with what was loaded
 * (also FSW = 0, abridged tag word 0xff, CR0/CR4 bits and, with AVX,
 * XCR0), and print a line. Only fpu_s.S touches FPU/SSE/AVX state: the C
 * code is built with -mgeneral-regs-only.
 *
 * KVM's instruction emulator, through which a software KVM such as kvm-pvm
 * runs ring-0 guest code, knows FXSAVE/FXRSTOR but no VEX instruction: the
 * kernel turns AVX off by itself where it finds it runs emulated (a
 * dec/jnz loop costs over 50 TSC ticks an iteration); avx=1 forces it on.
 *
 * The kernel has no multiboot information, so the command line comes from
 * fw_cfg (0x0014 size, 0x0015 data), where sfvmm puts it; where that is
 * empty (QEMU fills it only for Linux kernels), from the fw_cfg file
 * opt/sfvmm/cmdline (QEMU: -fw_cfg name=opt/sfvmm/cmdline,string='...'):
 *   max=N     stop after check N (default 0: never stop)
 *   period=T  checks T TSC ticks apart (default 2500000: 1000/s at 2.5 GHz)
 *   delay=N   instead of period=, N dec/jnz iterations between checks
 *   avx=0|1   AVX off / on where CPUID has it (default: on unless emulated)
 *   corrupt=N self-test: before check N, reload xmm3 with its first byte
 *             flipped (check N then fails with "fpu: CORRUPT xmm3 ...")
 *
 * Output: "fpu: cpuid avx=A xsave=X emulated=E; using avx=U; max=N", then
 * "fpu: check N ok avx=U" per check and "fpu: done N checks ok avx=U" at
 * max. On a mismatch, one line per bad item, e.g.
 * "fpu: CORRUPT xmm3 got 0x<hi 8 bytes>:<lo 8 bytes> want 0x...:..." (also
 * st0-7 with 10 bytes, ymmh0-15) or "fpu: CORRUPT mxcsr got 0x1f80 want
 * 0xff80" (also fcw, fsw, ftw, cr0, cr4, xcr0), then "fpu: check N FAILED".
 *
 * Debug-exit values:
 *   0  max checks passed
 *   1  corruption
 *   2  malformed command line ("fpu: bad KEY=")
 *   3  an exception: "fpu: TRAP vector V" (e.g. 6 #UD, 7 #NM, 13 #GP)
 */
#include "kernel.h"

#define CR0_MP (1ull << 1)
#define CR0_EM (1ull << 2)
#define CR0_TS (1ull << 3)
#define CR4_OSFXSR (1ull << 9)
#define CR4_OSXMMEXCPT (1ull << 10)
#define CR4_OSXSAVE (1ull << 18)
#define XCR0_WANT 0x7ull /* x87 | SSE | AVX */

#define FCW_VALUE 0x067f
#define MXCSR_VALUE 0xff80u
#define DEFAULT_PERIOD 2500000u

struct fpu_init {
	uint8_t xmm[16][16];
	uint8_t ymmh[16][16];
	uint8_t st[8][10];
};

void fpu_load(const void *fxsave_image, const void *ymmh);
void fpu_store(void *fxsave_area, void *ymmh);
extern const char trap_stubs[];

static struct fpu_init init;
static uint8_t image[512] __attribute__((aligned(64)));
static uint8_t area[512] __attribute__((aligned(64)));
static uint8_t ymmh[16][16] __attribute__((aligned(16)));
static char cmdline[512];

struct gate64 {
	uint16_t off_lo, sel;
	uint8_t ist, type;
	uint16_t off_mid;
	uint32_t off_hi, zero;
} __attribute__((packed));
static struct gate64 idt[32] __attribute__((aligned(16)));

void fpu_trap(uint64_t vector)
{
	kprintf("fpu: TRAP vector %llu\n", (unsigned long long)vector);
	debug_exit(3);
}

static void load_idt(void)
{
	uint16_t cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	for (int v = 0; v < 32; v++) {
		uint64_t a = (uintptr_t)(trap_stubs + 16 * v);
		idt[v] = (struct gate64){.off_lo = (uint16_t)a, .sel = cs, .type = 0x8E,
					 .off_mid = (uint16_t)(a >> 16), .off_hi = (uint32_t)(a >> 32)};
	}
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) p = {sizeof idt - 1, (uintptr_t)idt};
	__asm__ volatile("lidt %0" : : "m"(p));
}

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static uint64_t read_cr0(void) { uint64_t v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static uint64_t read_cr4(void) { uint64_t v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static void write_cr0(uint64_t v) { __asm__ volatile("mov %0, %%cr0" : : "r"(v)); }
static void write_cr4(uint64_t v) { __asm__ volatile("mov %0, %%cr4" : : "r"(v)); }

static uint64_t xgetbv0(void)
{
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

static void xsetbv0(uint64_t v)
{
	__asm__ volatile("xsetbv" : : "a"((uint32_t)v), "d"((uint32_t)(v >> 32)), "c"(0));
}

/*
 * emulated guesses whether an instruction emulator runs this code: the
 * fastest of three runs of 10000 dec/jnz iterations takes over 50 TSC
 * ticks an iteration (on hardware about 1; KVM's emulator about 1000).
 */
static bool emulated(void)
{
	uint64_t best = UINT64_MAX;
	for (int i = 0; i < 3; i++) {
		uint64_t t0 = rdtsc();
		spin_loops(10000);
		uint64_t dt = rdtsc() - t0;
		if (dt < best)
			best = dt;
	}
	return best > 50 * 10000;
}

static bool arg(const char *key, uint64_t *v, bool *given)
{
	const char *s;
	size_t n;
	if (!cmdline_get(cmdline, key, &s, &n))
		return true;
	if (given)
		*given = true;
	if (parse_u64(s, n, v))
		return true;
	kprintf("fpu: bad %s=\n", key);
	return false;
}

/* Distinct, recognisable values: byte j of register i of kind k. */
static void make_init(void)
{
	for (int i = 0; i < 16; i++)
		for (int j = 0; j < 16; j++) {
			init.xmm[i][j] = (uint8_t)(0x10 * (j & 0xf) + i) ^ 0xa5;
			init.ymmh[i][j] = (uint8_t)(0x10 * i + j) ^ 0x3c;
		}
	/* 80-bit normals: explicit integer bit, exponent around the bias,
	 * alternating signs, mantissas that differ in every byte. */
	for (int i = 0; i < 8; i++) {
		uint64_t mant = 0x8000000000000000ull | (0x0123456789abcdefull * (uint64_t)(i + 1) >> 1);
		uint16_t se = (uint16_t)((0x3fff + 4 * i - 7) | (i & 1 ? 0x8000 : 0));
		for (int j = 0; j < 8; j++)
			init.st[i][j] = (uint8_t)(mant >> (8 * j));
		init.st[i][8] = (uint8_t)se;
		init.st[i][9] = (uint8_t)(se >> 8);
	}
	/* The FXSAVE layout (SDM vol. 1, table 10-2). */
	image[0] = (uint8_t)FCW_VALUE;
	image[1] = (uint8_t)(FCW_VALUE >> 8);
	image[4] = 0xff; /* abridged tag word: all 8 registers valid; FSW 0: TOP = 0 */
	for (int k = 0; k < 4; k++)
		image[24 + k] = (uint8_t)(MXCSR_VALUE >> (8 * k));
	for (int i = 0; i < 8; i++)
		for (int j = 0; j < 10; j++)
			image[32 + 16 * i + j] = init.st[i][j];
	for (int i = 0; i < 16; i++)
		for (int j = 0; j < 16; j++)
			image[160 + 16 * i + j] = init.xmm[i][j];
}

static uint64_t le(const uint8_t *b, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = (v << 8) | b[i];
	return v;
}

static bool same(const uint8_t *a, const uint8_t *b, int n)
{
	for (int i = 0; i < n; i++)
		if (a[i] != b[i])
			return false;
	return true;
}

/* 16 (or 10) bytes as 0x<high 8 bytes>:<low 8 bytes>. */
static void bad_reg(const char *what, int i, const uint8_t *got, const uint8_t *want, int n)
{
	kprintf("fpu: CORRUPT %s%d got 0x%llx:%016llx want 0x%llx:%016llx\n", what, i,
		(unsigned long long)le(got + 8, n - 8), (unsigned long long)le(got, 8),
		(unsigned long long)le(want + 8, n - 8), (unsigned long long)le(want, 8));
}

static bool bad_val(const char *what, uint64_t got, uint64_t want)
{
	if (got == want)
		return false;
	kprintf("fpu: CORRUPT %s got 0x%llx want 0x%llx\n", what, (unsigned long long)got, (unsigned long long)want);
	return true;
}

static bool check(bool avx)
{
	bool bad = false;
	uint64_t cr0 = read_cr0(), cr4 = read_cr4();
	uint64_t cr4_want = CR4_OSFXSR | CR4_OSXMMEXCPT | (avx ? CR4_OSXSAVE : 0);
	bad |= bad_val("cr0", cr0 & (CR0_MP | CR0_EM | CR0_TS), CR0_MP);
	bad |= bad_val("cr4", cr4 & (CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE), cr4_want);
	if (bad)
		return false; /* FXSAVE or XGETBV could fault */
	if (avx && bad_val("xcr0", xgetbv0(), XCR0_WANT))
		return false; /* VEXTRACTF128 would fault */

	fpu_store(area, avx ? ymmh : NULL);
	bad |= bad_val("fcw", le(area + 0, 2), FCW_VALUE);
	bad |= bad_val("fsw", le(area + 2, 2), 0);
	bad |= bad_val("ftw", area[4], 0xff);
	bad |= bad_val("mxcsr", le(area + 24, 4), MXCSR_VALUE);
	for (int i = 0; i < 8; i++)
		if (!same(area + 32 + 16 * i, init.st[i], 10)) {
			bad_reg("st", i, area + 32 + 16 * i, init.st[i], 10);
			bad = true;
		}
	for (int i = 0; i < 16; i++)
		if (!same(area + 160 + 16 * i, init.xmm[i], 16)) {
			bad_reg("xmm", i, area + 160 + 16 * i, init.xmm[i], 16);
			bad = true;
		}
	for (int i = 0; avx && i < 16; i++)
		if (!same(ymmh[i], init.ymmh[i], 16)) {
			bad_reg("ymmh", i, ymmh[i], init.ymmh[i], 16);
			bad = true;
		}
	return !bad;
}

void kmain64(uint64_t loader_rsp, uint64_t loader_rsi)
{
	(void)loader_rsp;
	(void)loader_rsi;
	uint64_t max = 0, period = DEFAULT_PERIOD, delay = 0, want_avx = 2, corrupt = 0;
	bool loops = false;
	uint32_t r[4];

	serial_init();
	load_idt();
	if (!fwcfg_cmdline(cmdline, sizeof cmdline) || cmdline[0] == 0)
		fwcfg_file("opt/sfvmm/cmdline", cmdline, sizeof cmdline);
	if (!arg("max", &max, NULL) || !arg("period", &period, NULL) || !arg("delay", &delay, &loops) ||
	    !arg("avx", &want_avx, NULL) || !arg("corrupt", &corrupt, NULL))
		debug_exit(2);

	cpuid(1, 0, r);
	bool has_avx = r[2] & (1u << 28), has_xsave = r[2] & (1u << 26);
	bool emul = emulated();
	bool avx = want_avx && has_avx && has_xsave && !(want_avx == 2 && emul);
	if (avx) {
		cpuid(0xd, 0, r);
		avx = (r[0] & XCR0_WANT) == XCR0_WANT;
	}
	kprintf("fpu: cpuid avx=%d xsave=%d emulated=%d; using avx=%d; max=%llu\n", has_avx, has_xsave, emul,
		avx, (unsigned long long)max);

	write_cr0((read_cr0() | CR0_MP) & ~(CR0_EM | CR0_TS));
	write_cr4(read_cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT | (avx ? CR4_OSXSAVE : 0));
	if (avx) {
		xsetbv0(XCR0_WANT);
		/*
		 * Seen under nested KVM on QEMU's TCG (with QEMU as the VMM
		 * too): CPUID offers AVX but the outer KVM never learns of
		 * the XSETBV, so XCR0 is back at 1 after the next exit to the
		 * VMM. Provoke an exit (a serial status read), look again,
		 * and if AVX did not stick test SSE and x87 only, saying so.
		 */
		(void)inb(0x3fd);
		if (xgetbv0() != XCR0_WANT) {
			kprintf("fpu: XSETBV did not take (xcr0=0x%llx): AVX unusable here, checking x87 and SSE only\n",
				(unsigned long long)xgetbv0());
			xsetbv0(1);
			write_cr4(read_cr4() & ~CR4_OSXSAVE);
			avx = false;
		}
	}

	make_init();
	fpu_load(image, avx ? init.ymmh : NULL);
	uint64_t t = rdtsc();
	for (uint64_t n = 1;; n++) {
		if (loops)
			spin_loops(delay);
		else
			tsc_wait_until(&t, period);
		if (n == corrupt) {
			image[160 + 16 * 3] ^= 0xff; /* FXRSTOR leaves the ymm upper halves */
			fpu_load(image, NULL);
		}
		if (!check(avx)) {
			kprintf("fpu: check %llu FAILED\n", (unsigned long long)n);
			debug_exit(1);
		}
		kprintf("fpu: check %llu ok avx=%d\n", (unsigned long long)n, avx);
		if (max && n >= max) {
			kprintf("fpu: done %llu checks ok avx=%d\n", (unsigned long long)n, avx);
			debug_exit(0);
		}
	}
}
