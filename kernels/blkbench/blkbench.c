/*
 * blkbench: block device throughput from inside a Linux guest, for
 * tests/bench/blk (sfvmm's virtio-blk against QEMU's).
 *
 *   blkbench DEV MODE BS COUNT [spin]
 *
 * MODE is seqread, seqwrite, randread or randwrite. blkbench does COUNT
 * reads or writes of BS bytes on DEV, one at a time, and prints
 *
 *   blkbench MODE bs=BS ops=COUNT bytes=TOTAL ns=ELAPSED
 *
 * DEV is opened with O_DIRECT so that each operation reaches the device
 * rather than the guest's page cache; the buffer is therefore aligned to
 * 4096 bytes and BS must be a multiple of 4096. Sequential modes start at
 * offset 0 and wrap at the end of the device; random modes pick
 * BS-aligned offsets within the device (BLKGETSIZE64) from a xorshift
 * generator with a fixed seed, so every run and every VMM sees the same
 * offsets. Writes end with fsync, inside the timed span: a VMM that only
 * caches the data pays for it there. Errors go to stderr with exit
 * status 2. Linked statically, like sfctl, for the busybox initramfs.
 *
 * With "spin", a child process counts in a loop while the operations
 * run, and the line ends with spins=N, its count over the timed span:
 * how much of the guest's CPU the I/O leaves to other work (a VMM that
 * serves requests on the vCPU's thread takes the copies from it; one
 * that serves them on a thread of its own may not).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/fs.h>

#define ALIGN 4096

static void fail(const char *what)
{
	fprintf(stderr, "blkbench: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void usage(void)
{
	fprintf(stderr, "usage: blkbench DEV seqread|seqwrite|randread|randwrite BS COUNT [spin]\n");
	exit(2);
}

static uint64_t number(const char *s)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno != 0 || end == s || *end != '\0' || v == 0)
		usage();
	return v;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		fail("clock_gettime");
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64 (Marsaglia 2003); the state must not be 0. */
static uint64_t xorshift64(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

int main(int argc, char **argv)
{
	if (argc != 5 && !(argc == 6 && strcmp(argv[5], "spin") == 0))
		usage();
	const char *dev = argv[1], *mode = argv[2];
	uint64_t bs = number(argv[3]), count = number(argv[4]);
	int write, random;
	if (strcmp(mode, "seqread") == 0)
		write = 0, random = 0;
	else if (strcmp(mode, "seqwrite") == 0)
		write = 1, random = 0;
	else if (strcmp(mode, "randread") == 0)
		write = 0, random = 1;
	else if (strcmp(mode, "randwrite") == 0)
		write = 1, random = 1;
	else
		usage();
	if (bs % ALIGN != 0) {
		fprintf(stderr, "blkbench: BS %" PRIu64 " is not a multiple of %d (O_DIRECT)\n", bs, ALIGN);
		exit(2);
	}

	int fd = open(dev, (write ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (fd < 0)
		fail(dev);
	uint64_t size;
	if (ioctl(fd, BLKGETSIZE64, &size) != 0)
		fail("BLKGETSIZE64");
	uint64_t blocks = size / bs;
	if (blocks == 0) {
		fprintf(stderr, "blkbench: %s holds %" PRIu64 " bytes, less than BS\n", dev, size);
		exit(2);
	}
	void *buf;
	int err = posix_memalign(&buf, ALIGN, bs);
	if (err != 0) {
		errno = err;
		fail("posix_memalign");
	}
	/* Non-zero data, so that a write is never a candidate for zero
	 * detection on the way down. */
	for (uint64_t i = 0; i < bs; i++)
		((unsigned char *)buf)[i] = (unsigned char)(i * 131 + 7);

	volatile uint64_t *spins = NULL;
	pid_t spinner = -1;
	if (argc == 6) {
		spins = mmap(NULL, sizeof *spins, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (spins == MAP_FAILED)
			fail("mmap");
		if ((spinner = fork()) < 0)
			fail("fork");
		if (spinner == 0) {
			/* Ends with blkbench, whatever way blkbench ends
			 * (PR_SET_PDEATHSIG cannot fail for a valid signal). */
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() == 1)
				_exit(0);
			for (;;)
				(*spins)++;
		}
		while (*spins == 0)
			usleep(1000);
	}

	uint64_t seed = 0x9e3779b97f4a7c15u;
	uint64_t spins0 = spins ? *spins : 0;
	uint64_t start = now_ns();
	for (uint64_t i = 0; i < count; i++) {
		uint64_t block = random ? xorshift64(&seed) % blocks : i % blocks;
		off_t off = (off_t)(block * bs);
		ssize_t n = write ? pwrite(fd, buf, bs, off) : pread(fd, buf, bs, off);
		if (n < 0)
			fail(write ? "pwrite" : "pread");
		if ((uint64_t)n != bs) {
			fprintf(stderr, "blkbench: %s at %" PRIu64 ": %zd bytes of %" PRIu64 "\n",
				write ? "pwrite" : "pread", (uint64_t)off, n, bs);
			exit(2);
		}
	}
	if (write && fsync(fd) != 0)
		fail("fsync");
	uint64_t elapsed = now_ns() - start;
	uint64_t spun = spins ? *spins - spins0 : 0;
	if (spinner > 0) {
		kill(spinner, SIGKILL);
		waitpid(spinner, NULL, 0);
	}
	close(fd);
	printf("blkbench %s bs=%" PRIu64 " ops=%" PRIu64 " bytes=%" PRIu64 " ns=%" PRIu64,
	       mode, bs, count, bs * count, elapsed);
	if (spins)
		printf(" spins=%" PRIu64, spun);
	printf("\n");
	return 0;
}
