/*
 * sfctl: SnowFlock's fork API for shell scripts in sfvmm's Linux guests.
 *
 *   t=$(sfctl ticket 3)      reserve up to 3 clone slots; prints the ticket
 *   sfctl slots $t           prints how many slots the ticket grants
 *   id=$(sfctl clone $t)     fork: prints 0 in the parent, 1..m in each clone
 *   c=$(sfctl checkpoint)    prints C in the parent, 0 in clones made from it
 *   sfctl create $c $t       start the ticket's clones from checkpoint C
 *   sfctl exit [STATUS]      end this clone once the console has sent what
 *                            was written to it (never returns in a clone)
 *   sfctl join $t            wait for the ticket's clones; exit status 0 if
 *                            all ended with sf_exit(0), else 1
 *   sfctl kill $t            end the ticket's clones now
 *   sfctl id                 prints this VM's clone ID (0 in the parent)
 *
 * Errors go to stderr with the device's error name, and sfctl exits 2.
 * It needs root (ioperm) and is linked statically so that it runs in a
 * busybox initramfs. Each call is one instruction (kernels/lib/sf.h), so
 * the kernel may move sfctl between CPUs at any point.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "../lib/sf.h"

static const char *prog = "sfctl";

/*
 * drain lets a terminal send what was written to it, for at most 2 s.
 * sf_exit ends the clone at once, and a kernel's serial driver holds
 * output in a buffer: "echo done; sfctl exit" would lose its tail. A
 * console that never drains must not keep the clone alive, hence no
 * tcdrain(). Not a terminal: nothing to wait for.
 */
static void drain(int fd)
{
	for (int i = 0; i < 200; i++) {
		int queued;
		if (ioctl(fd, TIOCOUTQ, &queued) != 0 || queued == 0)
			return;
		usleep(10000);
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: %s ticket N | slots T | clone T | checkpoint | create C T | exit [STATUS] |"
			" join T | kill T | id\n", prog);
	exit(2);
}

static int32_t num(const char *s)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *s == 0 || *end != 0 || v < 0 || v > 0x7fffffff) {
		fprintf(stderr, "%s: %s is not a number\n", prog, s);
		exit(2);
	}
	return (int32_t)v;
}

static int32_t check(const char *what, int32_t r)
{
	if (r < 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, what, sf_strerror(r));
		exit(2);
	}
	return r;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	const char *cmd = argv[1];
	int nargs = argc - 2;
	if (ioperm(SF_PORT, 4, 1) != 0) {
		fprintf(stderr, "%s: ioperm(0x%x): %s (sfctl needs root)\n", prog, SF_PORT, strerror(errno));
		return 2;
	}
	if (!sf_probe()) {
		fprintf(stderr, "%s: no sfvmm fork device at port 0x%x\n", prog, SF_PORT);
		return 2;
	}
	/* stdout may be a pipe ($(...)): a clone must not inherit unflushed output. */
	setvbuf(stdout, NULL, _IONBF, 0);
	if (!strcmp(cmd, "ticket") && nargs == 1) {
		int32_t t = check("ticket", sf_request_ticket((uint32_t)num(argv[2])));
		int32_t m = sf_ticket_slots(t);
		if (m >= 0 && m < num(argv[2]))
			fprintf(stderr, "%s: ticket %d grants %d of %d slots\n", prog, t, m, num(argv[2]));
		printf("%d\n", t);
	} else if (!strcmp(cmd, "slots") && nargs == 1) {
		printf("%d\n", check("slots", sf_ticket_slots(num(argv[2]))));
	} else if (!strcmp(cmd, "clone") && nargs == 1) {
		printf("%d\n", check("clone", sf_clone(num(argv[2]))));
	} else if (!strcmp(cmd, "checkpoint") && nargs == 0) {
		printf("%d\n", check("checkpoint", sf_checkpoint_parent()));
	} else if (!strcmp(cmd, "create") && nargs == 2) {
		check("create", sf_create_clones(num(argv[2]), num(argv[3])));
	} else if (!strcmp(cmd, "exit") && nargs <= 1) {
		drain(STDOUT_FILENO);
		drain(STDERR_FILENO);
		check("exit", sf_exit(nargs ? (uint32_t)num(argv[2]) : 0));
	} else if (!strcmp(cmd, "join") && nargs == 1) {
		int32_t failed = check("join", sf_join(num(argv[2])));
		if (failed) {
			fprintf(stderr, "%s: %d clones did not end with sf_exit(0)\n", prog, failed);
			return 1;
		}
	} else if (!strcmp(cmd, "kill") && nargs == 1) {
		check("kill", sf_kill(num(argv[2])));
	} else if (!strcmp(cmd, "id") && nargs == 0) {
		printf("%d\n", check("id", sf_id()));
	} else {
		usage();
	}
	return 0;
}
