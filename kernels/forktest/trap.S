/*
 * forktest's exception entry points: vectors 0-31 push their number and
 * call trap(frame), which reports the vector, error code and EIP and
 * exits. A fork that corrupts a guest's memory or state then says how,
 * instead of ending in a triple fault.
 */
	.text
	.code32
	.globl trap_stubs
	.align 16
trap_stubs:
	.set v, 0
	.rept 32
	.align 16
	/* Vectors 8, 10-14, 17, 21, 29, 30 push an error code; the others get a 0. */
	.if (v == 8) || (v >= 10 && v <= 14) || (v == 17) || (v == 21) || (v == 29) || (v == 30)
	pushl $v
	.else
	pushl $0
	pushl $v
	.endif
	jmp trap_common
	.set v, v + 1
	.endr

trap_common:
	cld
	pushl %esp         /* the frame: vector, error, eip, cs, eflags */
	call trap          /* does not return */
