/*
 * kernel.h: the small library shared by sfvmm's test kernels.
 *
 * The same sources are compiled twice, for 32-bit multiboot kernels and for
 * the 64-bit longmode kernel. Everything here talks to the devices a test
 * image may rely on under both `qemu -kernel` and sfvmm: the COM1 16550 at
 * 0x3f8, QEMU's fw_cfg legacy I/O interface at 0x510/0x511 and the
 * isa-debug-exit device at 0xf4.
 */
#ifndef SFVMM_KERNEL_H
#define SFVMM_KERNEL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Port I/O. */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

/* Physical memory access; paging is off (32-bit) or identity-mapped (64-bit). */
static inline uint32_t mmio_read32(uintptr_t a) { return *(volatile uint32_t *)a; }
static inline void mmio_write32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }

/* serial.c: COM1, 115200 8N1, polled. "\n" is sent as "\r\n". */
void serial_init(void);
void serial_putc(char c);
void serial_puts(const char *s);

/* printf.c: %s %c %d %u %x %p, with optional '0', width and 'l'/'ll'. */
int kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int kvprintf(const char *fmt, va_list ap);

/* exit.c: isa-debug-exit. QEMU and sfvmm exit with status (value<<1)|1. */
#define DEBUG_EXIT_PORT 0xf4
void debug_exit(uint8_t value) __attribute__((noreturn));
void halt(void) __attribute__((noreturn));

/* fwcfg.c: QEMU fw_cfg, legacy I/O interface. */
#define FW_CFG_SIGNATURE 0x0000
#define FW_CFG_RAM_SIZE 0x0003
#define FW_CFG_NB_CPUS 0x0005
#define FW_CFG_CMDLINE_SIZE 0x0014
#define FW_CFG_CMDLINE_DATA 0x0015
#define FW_CFG_FILE_DIR 0x0019
bool fwcfg_present(void);
void fwcfg_read(uint16_t key, void *buf, uint32_t len);
bool fwcfg_ram_size(uint64_t *size);
bool fwcfg_cpus(uint32_t *n);
bool fwcfg_cmdline(char *buf, uint32_t size); /* NUL-terminated, cut to size-1 */
bool fwcfg_file(const char *name, char *buf, uint32_t size); /* likewise */

/* multiboot.c: the parts of the multiboot v1 boot information we use. */
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
struct boot {
	bool multiboot;       /* EAX held the multiboot magic */
	bool has_mem;         /* mem_lower/mem_upper are valid */
	uint32_t mem_lower;   /* KiB of RAM below 640 KiB */
	uint32_t mem_upper;   /* KiB of RAM from 1 MiB to the first hole */
	const char *cmdline;  /* never NULL; "" when absent */
};
void boot_parse(uint32_t magic, uint32_t mbi, struct boot *b);

/* cmdline.c: "key=value" words; QEMU puts the kernel path first. */
bool cmdline_get(const char *cmdline, const char *key, const char **val, size_t *len);
bool parse_u64(const char *s, size_t len, uint64_t *v);  /* decimal or 0x hex */
bool parse_size(const char *s, size_t len, uint64_t *v); /* with K/M/G suffix */

/* delay.c: busy waits. */
void spin_loops(uint64_t n);                       /* n dec/jnz iterations */
void tsc_wait_until(uint64_t *t, uint64_t ticks); /* until *t + ticks; then *t += ticks */

/* idt.c (32-bit kernels only): a 256-entry IDT of ring-0 interrupt gates;
 * vectors not set are not present. */
void idt_set(int vector, const void *handler);
void idt_load(void);

/* string helpers */
size_t kstrlen(const char *s);

#endif
