/* Shared by smp.c and trampoline.S. */
#define TRAMPOLINE_ADDR 0x8000
#define MAX_CPUS 64
#define AP_STACK_SIZE 4096
