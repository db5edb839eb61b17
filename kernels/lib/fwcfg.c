/* QEMU fw_cfg, legacy I/O interface (QEMU docs/specs/fw_cfg.txt). */
#include "kernel.h"

#define FW_CFG_PORT_SEL 0x510  /* 16-bit write: select an item */
#define FW_CFG_PORT_DATA 0x511 /* 8-bit reads: the item's bytes in order */

void fwcfg_read(uint16_t key, void *buf, uint32_t len)
{
	uint8_t *p = buf;
	outw(FW_CFG_PORT_SEL, key);
	for (uint32_t i = 0; i < len; i++)
		p[i] = inb(FW_CFG_PORT_DATA);
}

bool fwcfg_present(void)
{
	char sig[4];
	fwcfg_read(FW_CFG_SIGNATURE, sig, sizeof sig);
	return sig[0] == 'Q' && sig[1] == 'E' && sig[2] == 'M' && sig[3] == 'U';
}

static uint64_t le(const uint8_t *b, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = (v << 8) | b[i];
	return v;
}

bool fwcfg_ram_size(uint64_t *size)
{
	uint8_t b[8];
	if (!fwcfg_present())
		return false;
	fwcfg_read(FW_CFG_RAM_SIZE, b, sizeof b);
	*size = le(b, 8);
	return true;
}

bool fwcfg_cpus(uint32_t *n)
{
	uint8_t b[2];
	if (!fwcfg_present())
		return false;
	fwcfg_read(FW_CFG_NB_CPUS, b, sizeof b);
	*n = (uint32_t)le(b, 2);
	return true;
}
