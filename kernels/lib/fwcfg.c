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

/*
 * fwcfg_cmdline copies the command line item (0x0014 size, counting the
 * NUL; 0x0015 data) into buf, NUL-terminated and cut to size-1 bytes. It
 * returns false, leaving buf "", where fw_cfg is absent or the item is
 * empty. Kernels with no multiboot information (the ELF64 ones) use it.
 */
bool fwcfg_cmdline(char *buf, uint32_t size)
{
	uint8_t b[4];
	if (size == 0)
		return false;
	buf[0] = 0;
	if (!fwcfg_present())
		return false;
	fwcfg_read(FW_CFG_CMDLINE_SIZE, b, sizeof b);
	uint32_t n = (uint32_t)le(b, 4);
	if (n == 0)
		return false;
	if (n > size - 1)
		n = size - 1;
	fwcfg_read(FW_CFG_CMDLINE_DATA, buf, n);
	buf[n] = 0;
	return true;
}

/*
 * fwcfg_file reads the named file (e.g. QEMU's -fw_cfg name=opt/x,string=y)
 * into buf, NUL-terminated and cut to size-1 bytes; false where there is
 * no such file. The directory (key 0x0019) is big-endian: a u32 count,
 * then 64-byte entries of u32 size, u16 select, u16 reserved, name[56].
 */
bool fwcfg_file(const char *name, char *buf, uint32_t size)
{
	uint8_t b[4], e[64];
	if (size == 0)
		return false;
	buf[0] = 0;
	if (!fwcfg_present())
		return false;
	fwcfg_read(FW_CFG_FILE_DIR, b, sizeof b);
	uint32_t count = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
	for (uint32_t i = 0; i < count && i < 0x4000; i++) {
		/* fwcfg_read reselects; read on from the directory by hand */
		for (int k = 0; k < 64; k++)
			e[k] = inb(0x511);
		uint32_t j = 0;
		while (j < 56 && name[j] && e[8 + j] == (uint8_t)name[j])
			j++;
		if (j == 56 || name[j] || e[8 + j])
			continue;
		uint32_t n = (uint32_t)e[0] << 24 | (uint32_t)e[1] << 16 | (uint32_t)e[2] << 8 | e[3];
		if (n > size - 1)
			n = size - 1;
		fwcfg_read((uint16_t)(e[4] << 8 | e[5]), buf, n);
		buf[n] = 0;
		return true;
	}
	return false;
}
