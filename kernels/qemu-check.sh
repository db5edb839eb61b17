#!/bin/sh
# qemu-check.sh [BUILD]: boots each test kernel under QEMU TCG, the reference
# these images must match under sfvmm, and checks QEMU's exit status and a
# line of the serial output. Usage: make -C kernels qemu-check
set -u
B=${1:-../build/kernels}
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
fail=0

# run STATUS PATTERN QEMU-ARGS...: QEMU must exit with STATUS ((value<<1)|1
# for isa-debug-exit, 0 for a triple fault with -no-reboot) and print a line
# matching PATTERN.
run() {
	want=$1 pat=$2
	shift 2
	timeout 120 qemu-system-x86_64 -accel tcg -nographic -serial stdio -monitor none \
		-net none -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 "$@" \
		</dev/null >"$tmp" 2>&1
	got=$?
	# Drop the firmware banner; the kernel's first line follows "Booting from ROM.."
	out=$(tr -d '\r' <"$tmp")
	out=${out#*Booting from ROM..}
	if [ "$got" = "$want" ] && printf '%s\n' "$out" | grep -q -- "$pat"; then
		echo "ok   status $got: $*"
	else
		echo "FAIL status $got (want $want, output matching '$pat'): $*"
		fail=1
	fi
	printf '%s\n' "$out" | sed 's/^/     | /'
}

run 1 '^hello from sfvmm$' -kernel "$B/hello.elf"
run 7 '^cmdline: .*exit=3$' -kernel "$B/hello.elf" -append 'exit=3'
for n in 1 2 4; do
	run 1 "^smp: $n of $n cpus online$" -smp "$n" -kernel "$B/smp.elf"
done
run 3 '^smp: only 2 of 3 cpus$' -smp 2 -kernel "$B/smp.elf" -append 'cpus=3'
run 1 '^memtest: ok 268435456 bytes$' -m 512 -kernel "$B/memtest.elf" -append 'size=256M'
run 5 '^memtest: .* do not fit in RAM' -m 128 -kernel "$B/memtest.elf" -append 'size=256M'
run 1 '^poke: still alive after [0-9]* accesses$' -kernel "$B/poke.elf"
run 0 '^triple: faulting now$' -kernel "$B/triple.elf"
# QEMU cannot load an ELF64 kernel; lmboot.elf plays sfvmm's long-mode loader.
run 1 '^long mode: ok$' -kernel "$B/lmboot.elf" -device loader,file="$B/longmode.elf"

# The kernels for snapshot/restore tests.
run 1 '^count 500$' -kernel "$B/counter.elf" -append 'max=500'
run 1 '^timer: done pit=[0-9]* lapic=[0-9]*$' -kernel "$B/timer.elf" -append 'ticks=300'
run 1 '^timer: done pit=[0-9]* lapic=[0-9]*$' -kernel "$B/timer.elf" -append 'ticks=300 poll=1'
# fpu.elf reads its command line from fw_cfg; QEMU fills the cmdline item
# only for Linux, so it also looks for the file opt/sfvmm/cmdline.
for cpu in qemu64:0 max:1; do
	run 1 "^fpu: done 5 checks ok avx=${cpu#*:}$" -cpu "${cpu%:*}" -kernel "$B/lmboot.elf" \
		-device loader,file="$B/fpu.elf" -fw_cfg name=opt/sfvmm/cmdline,string='max=5'
done
run 3 '^fpu: CORRUPT xmm3 got ' -cpu max -kernel "$B/lmboot.elf" \
	-device loader,file="$B/fpu.elf" -fw_cfg name=opt/sfvmm/cmdline,string='max=5 corrupt=2'

# With LINUX=path/to/vmlinuz (e.g. from `apt-get download linux-image-6.1.0-NN-amd64`
# and `dpkg -x`), also boot Linux with the initramfs from `make initramfs`.
if [ -n "${LINUX:-}" ]; then
	for n in 1 2; do
		run 0 "^sfvmm-init: command exited 3$" -smp "$n" -m 512 -kernel "$LINUX" -initrd "$B/initramfs.cpio" \
			-append 'console=ttyS0 quiet sfvmm.run="echo hi; uname -r; exit 3"'
	done
	# Not anchored: a console reset sequence precedes init's first line.
	run 7 "sfvmm-init: 2 cpus$" -smp 2 -m 512 -kernel "$LINUX" -initrd "$B/initramfs.cpio" \
		-append 'console=ttyS0 quiet sfvmm.debugexit sfvmm.run="exit 3"'
fi
exit $fail
