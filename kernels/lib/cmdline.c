/* Command-line words and numbers. */
#include "kernel.h"

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n'; }

/*
 * cmdline_get finds the word "key=value" and returns the value (not
 * NUL-terminated). The last occurrence wins, as in Linux.
 */
bool cmdline_get(const char *s, const char *key, const char **val, size_t *len)
{
	size_t klen = kstrlen(key);
	bool found = false;
	while (*s) {
		while (is_space(*s))
			s++;
		const char *w = s;
		while (*s && !is_space(*s))
			s++;
		size_t wlen = (size_t)(s - w);
		if (wlen > klen && w[klen] == '=') {
			size_t i = 0;
			while (i < klen && w[i] == key[i])
				i++;
			if (i == klen) {
				*val = w + klen + 1;
				*len = wlen - klen - 1;
				found = true;
			}
		}
	}
	return found;
}

bool parse_u64(const char *s, size_t len, uint64_t *v)
{
	uint64_t x = 0;
	int base = 10;
	if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
		len -= 2;
	}
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		unsigned d;
		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = (unsigned)(c - 'A' + 10);
		else
			return false;
		if (x >> 59) /* x*base + d might overflow; no 64-bit division here */
			return false;
		x = x * (unsigned)base + d;
	}
	*v = x;
	return true;
}

bool parse_size(const char *s, size_t len, uint64_t *v)
{
	int shift = 0;
	if (len > 0) {
		switch (s[len - 1]) {
		case 'k': case 'K': shift = 10; break;
		case 'm': case 'M': shift = 20; break;
		case 'g': case 'G': shift = 30; break;
		}
		if (shift)
			len--;
	}
	uint64_t x;
	if (!parse_u64(s, len, &x) || x > (UINT64_MAX >> shift))
		return false;
	*v = x << shift;
	return true;
}
