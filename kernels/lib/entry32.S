/*
 * Multiboot v1 entry for the 32-bit test kernels.
 *
 * The loader (QEMU -kernel, sfvmm) enters _start in 32-bit protected mode,
 * paging off, with EAX = 0x2BADB002 and EBX = the multiboot information.
 * Multiboot leaves the GDT undefined, so we load our own before touching a
 * segment register, clear .bss ourselves (a loader that skips it must not
 * break us), and call kmain(magic, mbi) on a 16 KiB stack in .bss.
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000002 /* bit 1: we want mem_lower/mem_upper */

	.section .multiboot, "a"
	.align 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.text
	.code32
	.globl _start
_start:
	cli
	cld
	lgdt gdt_ptr
	ljmp $0x08, $1f
1:	movl $0x10, %ecx
	movw %cx, %ds
	movw %cx, %es
	movw %cx, %fs
	movw %cx, %gs
	movw %cx, %ss
	movl $stack_top, %esp

	movl %eax, %esi         /* keep the magic; rep stosb needs eax */
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	xorl %eax, %eax
	rep stosb

	pushl %ebx
	pushl %esi
	call kmain
2:	cli
	hlt
	jmp 2b

	.data
	.align 8
	/* Selectors 0x08 (flat code) and 0x10 (flat data); smp's APs use it too. */
	.globl gdt, gdt_ptr
gdt:
	.quad 0
	.quad 0x00CF9A000000FFFF
	.quad 0x00CF92000000FFFF
gdt_end:
gdt_ptr:
	.word gdt_end - gdt - 1
	.long gdt

	.bss
	.align 16
stack:
	.space 16384
stack_top:
