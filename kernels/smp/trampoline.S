/*
 * AP start-up. smp.c copies [trampoline_start, trampoline_end) to
 * TRAMPOLINE_ADDR (below 1 MiB, page aligned) and sends SIPI with vector
 * TRAMPOLINE_ADDR >> 12, so an AP starts here in real mode at
 * CS:IP = 0x0800:0000. It loads a minimal GDT held in the copy itself,
 * enables protection and far-jumps to ap_entry32 in the kernel proper,
 * which switches to the kernel's GDT and to a stack of its own.
 */
#include "smp.h"

/* The address a trampoline label has once copied. */
#define T(x) ((x) - trampoline_start + TRAMPOLINE_ADDR)

	.section .rodata
	.code16
	.globl trampoline_start, trampoline_end
trampoline_start:
	cli
	cld
	xorw %ax, %ax
	movw %ax, %ds           /* T() addresses are below 64 KiB */
	lgdtl T(tramp_gdt_ptr)
	movl %cr0, %eax
	orl $1, %eax            /* CR0.PE */
	movl %eax, %cr0
	ljmpl $0x08, $ap_entry32

	.align 8
tramp_gdt:
	.quad 0
	.quad 0x00CF9A000000FFFF
	.quad 0x00CF92000000FFFF
tramp_gdt_ptr:
	.word tramp_gdt_ptr - tramp_gdt - 1
	.long T(tramp_gdt)
trampoline_end:

	.text
	.code32
ap_entry32:
	/* DS still holds its real-mode limit of 64 KiB, which KVM enforces:
	 * load a flat data segment from the trampoline's GDT before touching
	 * the kernel's memory above 1 MiB. */
	movl $0x10, %eax
	movw %ax, %ds
	lgdt gdt_ptr
	ljmp $0x08, $1f
1:	movl $0x10, %eax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %fs
	movw %ax, %gs
	movw %ax, %ss
	/* Stack number ap_next_stack++; APs beyond MAX_CPUS just halt. */
	movl $1, %eax
	lock xaddl %eax, ap_next_stack
	cmpl $MAX_CPUS, %eax
	jae 2f
	incl %eax
	movl $AP_STACK_SIZE, %ecx
	mull %ecx
	addl $ap_stacks, %eax
	movl %eax, %esp
	call ap_main
2:	cli
	hlt
	jmp 2b
