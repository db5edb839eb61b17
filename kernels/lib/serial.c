/* COM1 16550 UART output, polled. */
#include "kernel.h"

#define COM1 0x3f8
#define THR 0 /* transmit holding register (DLAB=0) */
#define IER 1
#define FCR 2
#define LCR 3
#define MCR 4
#define LSR 5
#define LSR_THRE 0x20

void serial_init(void)
{
	outb(COM1 + IER, 0x00);  /* no interrupts: we poll */
	outb(COM1 + LCR, 0x80);  /* DLAB on to set the divisor */
	outb(COM1 + 0, 0x01);    /* 115200 baud */
	outb(COM1 + 1, 0x00);
	outb(COM1 + LCR, 0x03);  /* 8N1, DLAB off */
	outb(COM1 + FCR, 0xc7);  /* FIFOs on and cleared */
	outb(COM1 + MCR, 0x03);  /* DTR, RTS */
}

void serial_putc(char c)
{
	if (c == '\n')
		serial_putc('\r');
	/* Bounded: a VMM whose LSR never reports THRE still gets the byte. */
	for (int i = 0; i < 100000 && !(inb(COM1 + LSR) & LSR_THRE); i++)
		cpu_relax();
	outb(COM1 + THR, (uint8_t)c);
}

void serial_puts(const char *s)
{
	while (*s)
		serial_putc(*s++);
}
