/*
 * sf.h: SnowFlock's fork API for sfvmm guests, over sfvmm's fork device.
 *
 * Header-only, for tiny kernels (freestanding) and for Linux programs
 * (sfctl; they must first get access to the port with ioperm(SF_PORT, 4, 1)
 * as root). The device's ABI (vmm/devices/forkdev) is one instruction per
 * call: `inl $SF_PORT, %eax` with the call number in EAX and the arguments
 * in EBX and ECX; the result comes back in EAX, negative for an error.
 *
 *   sf_request_ticket(n)    reserve up to n clone slots; a ticket (> 0)
 *                           for m <= n of them (sf_ticket_slots says m)
 *   sf_clone(t)             fork: 0 in the parent, 1..m in the clones
 *   sf_checkpoint_parent()  freeze the parent: a checkpoint C (> 0) in the
 *                           parent, 0 in the clones created from it
 *   sf_create_clones(C, t)  start t's clones from C
 *   sf_exit(status)         a clone ends (never returns in a clone)
 *   sf_join(t)              wait for t's clones to end: how many did not
 *                           end with sf_exit(0)
 *   sf_kill(t)              end t's clones now
 *   sf_id()                 this VM's clone ID, 0 in the parent
 */
#ifndef SFVMM_SF_H
#define SFVMM_SF_H

#include <stdint.h>

#define SF_PORT 0x5f0
#define SF_MAGIC 0x4b524653 /* "SFRK", what sf_probe returns */

enum {
	SF_CALL_PROBE = 0,
	SF_CALL_REQUEST_TICKET = 1,
	SF_CALL_CLONE = 2,
	SF_CALL_CHECKPOINT_PARENT = 3,
	SF_CALL_CREATE_CLONES = 4,
	SF_CALL_EXIT = 5,
	SF_CALL_JOIN = 6,
	SF_CALL_KILL = 7,
	SF_CALL_TICKET_SLOTS = 8,
	SF_CALL_ID = 9,
};

/* Error codes (results below zero). */
#define SF_EINVAL -1       /* unknown call or bad argument */
#define SF_ENOTICKET -2    /* no such ticket (never issued, joined or killed) */
#define SF_ECAPACITY -3    /* more clones than the capacity, or none free */
#define SF_ENOTPARENT -4   /* a clone made a parent's call */
#define SF_ENOTCHILD -5    /* the parent called sf_exit */
#define SF_EAGAIN -6       /* sf_join: clones still run (sf_join retries) */
#define SF_EBUSY -7        /* an earlier fork's image still serves clones */
#define SF_ENOCHECKPT -8   /* no such checkpoint */
#define SF_ETICKETUSED -9  /* the ticket already has clones */
#define SF_EFORK -10       /* the VMM could not fork */
#define SF_ENOFORK -11     /* this VMM has fork disabled */

static inline int32_t sf_call(uint32_t nr, uint32_t a0, uint32_t a1)
{
	uint32_t r = nr;
	__asm__ volatile("inl %w1, %0" : "+a"(r) : "Nd"((uint16_t)SF_PORT), "b"(a0), "c"(a1) : "memory");
	return (int32_t)r;
}

static inline int sf_probe(void) { return sf_call(SF_CALL_PROBE, 0, 0) == SF_MAGIC; }
static inline int32_t sf_request_ticket(uint32_t n) { return sf_call(SF_CALL_REQUEST_TICKET, n, 0); }
static inline int32_t sf_ticket_slots(int32_t t) { return sf_call(SF_CALL_TICKET_SLOTS, (uint32_t)t, 0); }
static inline int32_t sf_clone(int32_t t) { return sf_call(SF_CALL_CLONE, (uint32_t)t, 0); }
static inline int32_t sf_checkpoint_parent(void) { return sf_call(SF_CALL_CHECKPOINT_PARENT, 0, 0); }
static inline int32_t sf_create_clones(int32_t c, int32_t t)
{
	return sf_call(SF_CALL_CREATE_CLONES, (uint32_t)c, (uint32_t)t);
}
static inline int32_t sf_exit(uint32_t status) { return sf_call(SF_CALL_EXIT, status, 0); }
static inline int32_t sf_kill(int32_t t) { return sf_call(SF_CALL_KILL, (uint32_t)t, 0); }
static inline int32_t sf_id(void) { return sf_call(SF_CALL_ID, 0, 0); }

/* sf_join_once is one join call: SF_EAGAIN while clones still run. */
static inline int32_t sf_join_once(int32_t t) { return sf_call(SF_CALL_JOIN, (uint32_t)t, 0); }

/* sf_join waits until every clone of t has ended. */
static inline int32_t sf_join(int32_t t)
{
	int32_t r;
	while ((r = sf_join_once(t)) == SF_EAGAIN)
		;
	return r;
}

static inline const char *sf_strerror(int32_t e)
{
	switch (e) {
	case SF_EINVAL: return "SF_EINVAL: unknown call or bad argument";
	case SF_ENOTICKET: return "SF_ENOTICKET: no such ticket";
	case SF_ECAPACITY: return "SF_ECAPACITY: more clones than the capacity, or no slot free";
	case SF_ENOTPARENT: return "SF_ENOTPARENT: only the parent may do that";
	case SF_ENOTCHILD: return "SF_ENOTCHILD: only a clone may do that";
	case SF_EAGAIN: return "SF_EAGAIN: clones still run";
	case SF_EBUSY: return "SF_EBUSY: an earlier fork's clones still run";
	case SF_ENOCHECKPT: return "SF_ENOCHECKPT: no such checkpoint";
	case SF_ETICKETUSED: return "SF_ETICKETUSED: the ticket already has clones";
	case SF_EFORK: return "SF_EFORK: the VMM could not fork";
	case SF_ENOFORK: return "SF_ENOFORK: fork is disabled in this VMM";
	}
	return "unknown error";
}

#endif
