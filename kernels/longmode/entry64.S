/*
 * Entry of the ELF64 longmode kernel. sfvmm jumps to _start (0x200000) in
 * 64-bit long mode with the low 4 GiB identity-mapped, interrupts off,
 * RSP set and RSI = 0. We note the loader's RSP and RSI for kmain64, then
 * run on a stack of our own so a bad loader stack shows up in the report
 * rather than as a fault.
 */
	.section .text.entry, "ax"
	.code64
	.globl _start
_start:
	cli
	cld
	movq %rsp, %rdi         /* kmain64(loader_rsp, loader_rsi) */
	movq $stack_top, %rsp

	movq %rsi, %r12         /* callee-saved across the clear */
	movq %rdi, %r13
	movq $__bss_start, %rdi
	movq $__bss_end, %rcx
	subq %rdi, %rcx
	xorl %eax, %eax
	rep stosb

	movq %r13, %rdi
	movq %r12, %rsi
	call kmain64
1:	cli
	hlt
	jmp 1b

	.bss
	.align 16
stack:
	.space 16384
stack_top:
