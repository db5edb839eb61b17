/*
 * timer's interrupt entry points (32-bit, flat segments, ring 0).
 *
 * pit_isr (vector 0x20, IRQ0 via the 8259) and lapic_isr (vector 0x40, the
 * LAPIC timer) count in pit_ticks / lapic_ticks and send EOI. The PIC's
 * spurious IRQ7/IRQ15 and the LAPIC's spurious vector 0xff return without
 * EOI (IRQ15 still owes the master an EOI for the cascade). Every other
 * vector goes through trap_stubs[v] to trap(vector), which reports it and
 * exits.
 *
 * The handlers return with POPF; RET $8 (EFLAGS, then EIP, then drop CS and
 * EFLAGS) instead of IRET: the same thing for a same-privilege interrupt
 * with no error code, and KVM's instruction emulator, through which
 * software KVMs such as kvm-pvm run a ring-0 guest, cannot emulate a
 * protected-mode IRET (KVM_EXIT_INTERNAL_ERROR).
 */
#define IRET pushl 8(%esp); popfl; ret $8
#define LAPIC_EOI 0xFEE000B0

	.text
	.code32
	.globl pit_isr, lapic_isr, spurious_isr, spurious_isr_slave, trap_stubs

pit_isr:
	pushl %eax
	lock incl pit_ticks
	movb $0x20, %al
	outb %al, $0x20
	popl %eax
	IRET

lapic_isr:
	lock incl lapic_ticks
	movl $0, LAPIC_EOI
	IRET

spurious_isr:
	IRET

spurious_isr_slave:
	pushl %eax
	movb $0x20, %al
	outb %al, $0x20
	popl %eax
	IRET

	/* 256 stubs of 16 bytes each: push the vector, jump to the common code. */
	.align 16
trap_stubs:
	.set v, 0
	.rept 256
	.align 16
	pushl $v
	jmp trap_common
	.set v, v + 1
	.endr

trap_common:
	cld
	call trap          /* trap(vector); does not return */
1:	cli
	hlt
	jmp 1b
