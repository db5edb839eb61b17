/*
 * printf-lite. 64-bit values are printed without 64-bit division, which
 * 32-bit code would need libgcc for.
 */
#include "kernel.h"

static uint64_t divmod10(uint64_t n, unsigned *rem)
{
	uint64_t q = 0;
	uint32_t r = 0;
	for (int i = 63; i >= 0; i--) {
		r = (r << 1) | (uint32_t)((n >> i) & 1);
		if (r >= 10) {
			r -= 10;
			q |= (uint64_t)1 << i;
		}
	}
	*rem = r;
	return q;
}

static int emit(const char *s, int n, int width, char pad)
{
	int out = 0;
	for (; width > n; width--, out++)
		serial_putc(pad);
	for (int i = 0; i < n; i++, out++)
		serial_putc(s[i]);
	return out;
}

static int number(uint64_t v, bool hex, bool neg, int width, char pad)
{
	char buf[24];
	int i = sizeof buf;
	do {
		unsigned d;
		if (hex) {
			d = v & 0xf;
			v >>= 4;
		} else {
			v = divmod10(v, &d);
		}
		buf[--i] = "0123456789abcdef"[d];
	} while (v);
	if (neg)
		buf[--i] = '-';
	return emit(buf + i, (int)sizeof buf - i, width, pad);
}

int kvprintf(const char *fmt, va_list ap)
{
	int out = 0;
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			serial_putc(*fmt);
			out++;
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0, lng = 0;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l') {
			lng++;
			fmt++;
		}
		uint64_t u;
		int64_t d;
		switch (*fmt) {
		case 'd':
			d = lng >= 2 ? va_arg(ap, long long) : lng ? va_arg(ap, long) : va_arg(ap, int);
			out += number(d < 0 ? -(uint64_t)d : (uint64_t)d, false, d < 0, width, pad);
			break;
		case 'u':
		case 'x':
			u = lng >= 2 ? va_arg(ap, unsigned long long) : lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned);
			out += number(u, *fmt == 'x', false, width, pad);
			break;
		case 'p':
			out += emit("0x", 2, 0, ' ');
			out += number((uintptr_t)va_arg(ap, void *), true, false, width, pad);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			out += emit(s, (int)kstrlen(s), width, ' ');
			break;
		}
		case 'c': {
			char c = (char)va_arg(ap, int);
			out += emit(&c, 1, width, ' ');
			break;
		}
		case '%':
			serial_putc('%');
			out++;
			break;
		default: /* unknown: print it as is */
			serial_putc('%');
			if (!*fmt)
				return out + 1;
			serial_putc(*fmt);
			out += 2;
		}
	}
	return out;
}

int kprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = kvprintf(fmt, ap);
	va_end(ap);
	return n;
}
