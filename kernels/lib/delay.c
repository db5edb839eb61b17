/* Busy waits. */
#include "kernel.h"

/* spin_loops runs n iterations of a dec/jnz loop the compiler cannot drop. */
void spin_loops(uint64_t n)
{
	while (n) {
		uint32_t k = n > 0xffffffffu ? 0xffffffffu : (uint32_t)n;
		n -= k;
		__asm__ volatile("1: dec %0\n\tjnz 1b" : "+r"(k));
	}
}

/*
 * tsc_wait_until waits until at least ticks TSC ticks have passed since
 * *t and advances *t by ticks, or to now where that is behind by more than
 * ticks (a TSC that jumped, for example across a restore), so that a pace
 * set with it neither hangs nor races to catch up.
 */
void tsc_wait_until(uint64_t *t, uint64_t ticks)
{
	uint64_t now;
	while ((now = rdtsc()) - *t < ticks)
		; /* no PAUSE: a software KVM may take it as a cue to yield the host CPU */
	*t += ticks;
	if (now - *t > ticks)
		*t = now;
}
