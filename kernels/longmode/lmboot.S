/* enter_long_mode(pml4, entry): paging on in long mode, then jmp entry. */
	.text
	.code32
	.globl enter_long_mode
enter_long_mode:
	cli
	movl 4(%esp), %eax
	movl 8(%esp), %ebx
	movl %eax, %cr3
	movl %cr4, %eax
	orl $(1 << 5), %eax     /* CR4.PAE */
	movl %eax, %cr4
	movl $0xC0000080, %ecx  /* EFER */
	rdmsr
	orl $(1 << 8), %eax     /* EFER.LME */
	wrmsr
	lgdt gdt64_ptr
	movl %cr0, %eax
	orl $0x80000001, %eax   /* CR0.PG | CR0.PE */
	movl %eax, %cr0
	ljmp $0x08, $1f
	.code64
1:	movl $0x10, %eax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw %ax, %fs
	movw %ax, %gs
	movl $stack64_top, %esp      /* zero-extends into RSP */
	xorl %esi, %esi
	movl %ebx, %eax
	jmp *%rax

	.data
	.align 8
gdt64:
	.quad 0
	.quad 0x00AF9A000000FFFF /* 0x08: 64-bit code */
	.quad 0x00CF92000000FFFF /* 0x10: data */
gdt64_ptr:
	.word gdt64_ptr - gdt64 - 1
	.long gdt64

	.bss
	.align 16
	.space 4096
stack64_top:
