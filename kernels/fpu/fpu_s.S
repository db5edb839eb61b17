/*
 * fpu's register work, the only code in the kernel that touches x87, SSE
 * or AVX state (the C code is built with -mgeneral-regs-only, so loaded
 * registers survive calls into C).
 *
 * void fpu_load(const void *fxsave_image, const void *ymmh)
 *   FXRSTOR64 the 16-byte-aligned 512-byte image (x87 control, status and
 *   tag words, MXCSR, ST0-7, xmm0-15) and, when ymmh is not NULL,
 *   VINSERTF128 ymmh[16][16] into the upper halves of ymm0-15.
 *   FXRSTOR rather than FLDCW/LDMXCSR/FLDT/MOVDQU: KVM's instruction
 *   emulator (kvm-pvm runs ring-0 guests through it) has FXSAVE/FXRSTOR
 *   but none of the others.
 *
 * void fpu_store(void *fxsave_area, void *ymmh)
 *   FXSAVE64 to the 16-byte-aligned 512-byte area and, when ymmh is not
 *   NULL, VEXTRACTF128 the upper halves of ymm0-15 to ymmh[16][16].
 *   Neither changes any register.
 *
 * trap_stubs: 32 IDT entry points of 16 bytes (exceptions 0-31) that call
 * fpu_trap(vector), which reports and exits.
 */
	.text
	.code64
	.globl fpu_load, fpu_store, trap_stubs

fpu_load:
	fxrstor64 (%rdi)
	testq %rsi, %rsi
	jz 1f
	.irp i, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
	vinsertf128 $1, 16*\i(%rsi), %ymm\i, %ymm\i
	.endr
1:	ret

fpu_store:
	fxsave64 (%rdi)
	testq %rsi, %rsi
	jz 1f
	.irp i, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
	vextractf128 $1, %ymm\i, 16*\i(%rsi)
	.endr
1:	ret

	.align 16
trap_stubs:
	.set v, 0
	.rept 32
	.align 16
	pushq $v
	jmp trap_common
	.set v, v + 1
	.endr

trap_common:
	movq (%rsp), %rdi
	andq $-16, %rsp
	cld
	call fpu_trap      /* does not return */
1:	cli
	hlt
	jmp 1b
