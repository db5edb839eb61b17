/*
 * virtiobad: a hostile virtio driver. Against sfvmm's virtio-rng (run with
 * --rng --disk IMAGE; the rng's window is at 0xd0000000, the disk's next
 * to it), it puts each kind of malformed input in the rng's queue, or
 * negotiates wrongly, and checks that the device refuses it:
 * DEVICE_NEEDS_RESET in its status and the configuration-change bit in its
 * interrupt status (or, for features it does not offer, FEATURES_OK left
 * clear). After each case it resets the device. While the rng is failed
 * after the last case, it reads the disk's first sector, which another
 * device must still serve. At the end it makes two good rng requests, one
 * through an indirect table, which must be served.
 * The VMM must survive all of it.
 *
 * Prints "virtiobad: CASE: refused" per case, "virtiobad: disk while the
 * rng is failed: TEXT" (the sector's first bytes, up to a zero or 32),
 * "virtiobad: good request after the resets: 32 bytes" and "virtiobad:
 * good indirect request: 32 bytes"; debug-exit 0 if every case went as it
 * should, 1 otherwise (with a line saying which).
 */
#include "kernel.h"

#define RNG 0xd0000000u
#define DISK 0xd0001000u /* the next virtio-mmio window */
/* The device the registers below are of: RNG but for the disk's turn. */
static uint32_t dev = RNG;
#define REG(off) (*(volatile uint32_t *)(uintptr_t)(dev + (off)))
#define MAGIC 0x000
#define DEVICE_ID 0x008
#define DEV_FEAT_SEL 0x014
#define DRV_FEAT 0x020
#define DRV_FEAT_SEL 0x024
#define QUEUE_SEL 0x030
#define QUEUE_NUM 0x038
#define QUEUE_READY 0x044
#define QUEUE_NOTIFY 0x050
#define INT_STATUS 0x060
#define INT_ACK 0x064
#define STATUS 0x070
#define DESC_LO 0x080
#define DESC_HI 0x084
#define AVAIL_LO 0x090
#define AVAIL_HI 0x094
#define USED_LO 0x0a0
#define USED_HI 0x0a4

#define ACK 1
#define DRIVER 2
#define DRIVER_OK 4
#define FEATURES_OK 8
#define NEEDS_RESET 0x40

#define QSIZE 8
/* The queue and a buffer, in RAM above the kernel. */
#define DESC_AT 0x200000u
#define AVAIL_AT 0x201000u
#define USED_AT 0x202000u
#define BUF_AT 0x203000u
#define TABLE_AT 0x204000u /* an indirect descriptor table */

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
} __attribute__((packed));

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4
#define INDIRECT_DESC (1u << 28) /* VIRTIO_F_INDIRECT_DESC, in word 0 */

static volatile struct desc *const desc = (volatile struct desc *)(uintptr_t)DESC_AT;
static volatile struct desc *const table = (volatile struct desc *)(uintptr_t)TABLE_AT;
static volatile uint16_t *const avail = (volatile uint16_t *)(uintptr_t)AVAIL_AT; /* flags, idx, ring[] */
static volatile uint32_t *const used = (volatile uint32_t *)(uintptr_t)USED_AT;   /* flags|idx, {id, len}[] */
static int failures;

/* setup resets the device and brings it up with features hi:lo (word 1
 * holds VERSION_1) and queue 0; it returns false if FEATURES_OK was
 * refused. With ready false it stops before DRIVER_OK. */
static bool setup(uint32_t lo, uint32_t hi)
{
	REG(STATUS) = 0;
	for (uint32_t a = DESC_AT; a < TABLE_AT + 0x1000; a += 4)
		*(volatile uint32_t *)(uintptr_t)a = 0;
	REG(STATUS) = ACK;
	REG(STATUS) = ACK | DRIVER;
	REG(DRV_FEAT_SEL) = 0;
	REG(DRV_FEAT) = lo;
	REG(DRV_FEAT_SEL) = 1;
	REG(DRV_FEAT) = hi;
	REG(STATUS) = ACK | DRIVER | FEATURES_OK;
	if (!(REG(STATUS) & FEATURES_OK))
		return false;
	REG(QUEUE_SEL) = 0;
	REG(QUEUE_NUM) = QSIZE;
	REG(DESC_LO) = DESC_AT;
	REG(DESC_HI) = 0;
	REG(AVAIL_LO) = AVAIL_AT;
	REG(AVAIL_HI) = 0;
	REG(USED_LO) = USED_AT;
	REG(USED_HI) = 0;
	REG(QUEUE_READY) = 1;
	REG(STATUS) = ACK | DRIVER | FEATURES_OK | DRIVER_OK;
	return true;
}

/* offer makes chain head available at avail index idx and notifies. */
static void offer(uint16_t head, uint16_t idx)
{
	avail[2 + (idx - 1) % QSIZE] = head;
	avail[1] = idx;
	REG(QUEUE_NOTIFY) = 0;
}

/*
 * The device may serve a notification after the write returns (through
 * an ioeventfd, on a thread of the VMM's), as it answers a real driver
 * with an interrupt; this one polls. The bound (about 200000 register
 * reads) only ends a wait for a device that never answers.
 */
#define POLLS 200000

static void expect_refused(const char *name)
{
	for (int i = 0; i < POLLS && !(REG(INT_STATUS) & 2); i++)
		spin_loops(1000);
	uint32_t st = REG(STATUS), is = REG(INT_STATUS);
	if ((st & NEEDS_RESET) && (is & 2)) {
		kprintf("virtiobad: %s: refused\n", name);
	} else {
		kprintf("virtiobad: %s: NOT refused (status 0x%x, interrupt status 0x%x)\n", name, st, is);
		failures++;
	}
	REG(INT_ACK) = is;
}

/* good waits for used index idx and checks that its entry says 32 bytes. */
static void good(uint16_t idx, const char *name)
{
	for (int i = 0; i < POLLS && (used[0] >> 16) < idx; i++)
		spin_loops(1000);
	uint32_t n = used[1 + 2 * (idx - 1) + 1]; /* used ring entry idx-1: id, then len */
	if ((used[0] >> 16) != idx || n != 32) {
		kprintf("virtiobad: %s: used idx %u, len %u\n", name, used[0] >> 16, n);
		failures++;
	} else {
		kprintf("virtiobad: %s: %u bytes\n", name, n);
	}
}

/*
 * read_disk reads sector 0 of the virtio-blk disk and prints its first
 * bytes: another device goes on while the rng needs a reset (which serves
 * nothing, so the queue's memory is the disk's for now).
 */
static void read_disk(void)
{
	dev = DISK;
	if (REG(MAGIC) != 0x74726976 || REG(DEVICE_ID) != 2) {
		kprintf("virtiobad: no virtio-blk at 0x%x (run with --disk)\n", DISK);
		failures++;
		dev = RNG;
		return;
	}
	setup(0, 1);
	volatile uint32_t *hdr = (volatile uint32_t *)(uintptr_t)BUF_AT; /* type, reserved, sector */
	hdr[0] = 0; /* VIRTIO_BLK_T_IN */
	hdr[1] = hdr[2] = hdr[3] = 0;
	volatile char *data = (volatile char *)(uintptr_t)(BUF_AT + 0x200);
	volatile uint8_t *status = (volatile uint8_t *)(uintptr_t)(BUF_AT + 0x400);
	*status = 0xff;
	desc[0] = (struct desc){BUF_AT, 16, F_NEXT, 1};
	desc[1] = (struct desc){BUF_AT + 0x200, 512, F_WRITE | F_NEXT, 2};
	desc[2] = (struct desc){BUF_AT + 0x400, 1, F_WRITE, 0};
	offer(0, 1);
	for (int i = 0; i < POLLS && (used[0] >> 16) < 1; i++)
		spin_loops(1000);
	if ((used[0] >> 16) != 1 || *status != 0) {
		kprintf("virtiobad: disk while the rng is failed: used idx %u, status %u\n", used[0] >> 16, *status);
		failures++;
	} else {
		char text[33];
		int n = 0;
		while (n < 32 && data[n] != 0) {
			text[n] = data[n];
			n++;
		}
		text[n] = 0;
		kprintf("virtiobad: disk while the rng is failed: %s\n", text);
	}
	REG(STATUS) = 0;
	dev = RNG;
}

void kmain(uint32_t magic, uint32_t mbi)
{
	(void)magic;
	(void)mbi;
	serial_init();
	if (REG(MAGIC) != 0x74726976 || REG(DEVICE_ID) != 4) {
		kprintf("virtiobad: no virtio-rng at 0x%x (run with --rng)\n", RNG);
		debug_exit(1);
	}

	setup(0, 1);
	desc[0] = (struct desc){0xf0000000u, 64, F_WRITE, 0};
	offer(0, 1);
	expect_refused("buffer outside RAM");

	setup(0, 1);
	desc[0] = (struct desc){BUF_AT, 0xffffffffu, F_WRITE, 0};
	offer(0, 1);
	expect_refused("oversized length");

	setup(0, 1);
	desc[0] = (struct desc){BUF_AT, 8, F_WRITE | F_NEXT, 1};
	desc[1] = (struct desc){BUF_AT, 8, F_WRITE | F_NEXT, 0};
	offer(0, 1);
	expect_refused("descriptor loop");

	setup(0, 1);
	for (uint16_t i = 0; i < QSIZE; i++)
		desc[i] = (struct desc){BUF_AT, 8, F_WRITE | F_NEXT, (uint16_t)(i + 1)};
	offer(0, 1);
	expect_refused("chain longer than the queue");

	setup(0, 1);
	offer(200, 1);
	expect_refused("head index past the queue");

	setup(0, 1);
	desc[0] = (struct desc){BUF_AT, 8, F_WRITE, 0};
	offer(0, 100);
	expect_refused("avail index past the queue's size");

	setup(0, 1);
	desc[0] = (struct desc){TABLE_AT, 16, F_INDIRECT, 0};
	table[0] = (struct desc){BUF_AT, 8, F_WRITE, 0};
	offer(0, 1);
	expect_refused("indirect descriptor not negotiated");

	setup(INDIRECT_DESC, 1);
	desc[0] = (struct desc){0xf0000000u, 32, F_INDIRECT, 0};
	offer(0, 1);
	expect_refused("indirect table outside RAM");

	setup(INDIRECT_DESC, 1);
	desc[0] = (struct desc){TABLE_AT, 32, F_INDIRECT, 0};
	table[0] = (struct desc){BUF_AT, 8, F_WRITE | F_NEXT, 1};
	table[1] = (struct desc){BUF_AT, 8, F_WRITE | F_NEXT, 0};
	offer(0, 1);
	expect_refused("loop in an indirect table");

	setup(INDIRECT_DESC, 1);
	desc[0] = (struct desc){TABLE_AT, 16, F_INDIRECT, 0};
	table[0] = (struct desc){TABLE_AT, 16, F_INDIRECT, 0};
	offer(0, 1);
	expect_refused("indirect table in an indirect table");

	if (setup(0, 0)) {
		kprintf("virtiobad: FEATURES_OK without VERSION_1\n");
		failures++;
	} else {
		kprintf("virtiobad: features without VERSION_1: refused\n");
	}
	REG(STATUS) = ACK | DRIVER | DRIVER_OK;
	expect_refused("DRIVER_OK without FEATURES_OK");
	read_disk();

	if (!setup(INDIRECT_DESC, 1)) {
		kprintf("virtiobad: features refused after the resets\n");
		debug_exit(1);
	}
	desc[0] = (struct desc){BUF_AT, 32, F_WRITE, 0};
	offer(0, 1);
	good(1, "good request after the resets");
	/* The same through an indirect table of two buffers. */
	desc[1] = (struct desc){TABLE_AT, 32, F_INDIRECT, 0};
	table[0] = (struct desc){BUF_AT, 16, F_WRITE | F_NEXT, 1};
	table[1] = (struct desc){BUF_AT + 16, 16, F_WRITE, 0};
	offer(1, 2);
	good(2, "good indirect request");
	debug_exit(failures ? 1 : 0);
}
