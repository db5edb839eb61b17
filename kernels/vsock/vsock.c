/*
 * vsock: AF_VSOCK streams for the vsock tests of sfvmm's Linux guests.
 *
 *   vsock echo PORT            listen on PORT, print "listening PORT", take
 *                              one connection and send back every byte it
 *                              brings, ASCII letters uppercased, until the
 *                              peer ends its side; then close and print
 *                              "echoed N bytes"
 *   vsock send CID PORT TEXT   connect to CID:PORT (the host is CID 2), send
 *                              TEXT, end the sending side and print what
 *                              comes back until the peer closes
 *   vsock cid                  print this VM's CID (it changes in a clone)
 *
 * The echo's uppercasing shows a host test that the guest program, not
 * the VMM, handled its bytes. Errors go to stderr, with exit status 1;
 * bad usage exits 2. Linked statically, like sfctl, for the busybox
 * initramfs.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/vm_sockets.h>

static const char *prog = "vsock";

static void usage(void)
{
	fprintf(stderr, "usage: %s echo PORT | send CID PORT TEXT | cid\n", prog);
	exit(2);
}

static void fail(const char *what)
{
	fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
	exit(1);
}

static unsigned int num(const char *s)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || !isdigit((unsigned char)*s) || *end != 0 || v > 0xffffffffUL) {
		fprintf(stderr, "%s: %s is not a number\n", prog, s);
		exit(2);
	}
	return (unsigned int)v;
}

static void write_all(int fd, const char *b, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, b, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			fail("write");
		}
		b += w;
		n -= (size_t)w;
	}
}

/* read_some is read(2) without EINTR: 0 at the end. */
static size_t read_some(int fd, char *b, size_t n)
{
	for (;;) {
		ssize_t r = read(fd, b, n);
		if (r >= 0)
			return (size_t)r;
		if (errno != EINTR)
			fail("read");
	}
}

static int echo(unsigned int port)
{
	int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		fail("socket");
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	if (bind(s, (struct sockaddr *)&a, sizeof a) != 0)
		fail("bind");
	if (listen(s, 1) != 0)
		fail("listen");
	/* The host connects once it has read this line. */
	printf("listening %u\n", port);
	int c = accept(s, NULL, NULL);
	if (c < 0)
		fail("accept");
	close(s);
	char buf[4096];
	size_t total = 0, n;
	while ((n = read_some(c, buf, sizeof buf)) > 0) {
		for (size_t i = 0; i < n; i++)
			buf[i] = (char)toupper((unsigned char)buf[i]);
		write_all(c, buf, n);
		total += n;
	}
	close(c);
	printf("echoed %zu bytes\n", total);
	return 0;
}

static int send_text(unsigned int cid, unsigned int port, const char *text)
{
	int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		fail("socket");
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port };
	if (connect(s, (struct sockaddr *)&a, sizeof a) != 0)
		fail("connect");
	write_all(s, text, strlen(text));
	/* The peer reads the end of TEXT, then answers. */
	if (shutdown(s, SHUT_WR) != 0)
		fail("shutdown");
	char buf[4096];
	size_t n;
	while ((n = read_some(s, buf, sizeof buf)) > 0)
		write_all(STDOUT_FILENO, buf, n);
	close(s);
	return 0;
}

static int print_cid(void)
{
	int fd = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail("open /dev/vsock");
	unsigned int cid;
	if (ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) != 0)
		fail("IOCTL_VM_SOCKETS_GET_LOCAL_CID");
	printf("%u\n", cid);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	/* Lines reach the console at once, "listening" above all. */
	setvbuf(stdout, NULL, _IONBF, 0);
	const char *cmd = argv[1];
	int nargs = argc - 2;
	if (!strcmp(cmd, "echo") && nargs == 1)
		return echo(num(argv[2]));
	if (!strcmp(cmd, "send") && nargs == 3)
		return send_text(num(argv[2]), num(argv[3]), argv[4]);
	if (!strcmp(cmd, "cid") && nargs == 0)
		return print_cid();
	usage();
}
