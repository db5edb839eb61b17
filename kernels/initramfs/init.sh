#!/bin/busybox sh
# /init of sfvmm's Linux test initramfs (built by kernels/initramfs).
#
# Mounts proc, sysfs and devtmpfs, prints "sfvmm-init: N cpus", then runs
# the command given on the kernel command line as sfvmm.run="..." with sh -c
# and prints "sfvmm-init: command exited STATUS". Without sfvmm.run it starts
# an interactive shell on the console. Then it powers off (poweroff -f), or
# resets where the kernel cannot power off.
#
# The kernel does not hand dotted parameters to init, so the command comes
# from /proc/cmdline: sfvmm.run="cmd args; more" (double quotes, may hold
# spaces, cannot hold a double quote) or sfvmm.run=word.
#
# With the word sfvmm.debugexit on the command line, the command's status S
# (at most 127) is also written to the isa-debug-exit port 0xf4 through
# /dev/port, so the VMM exits with status (S<<1)|1 instead of powering off.
#
# SFVMM_INIT_PARSE=FILE (for tests) only prints what would run for the
# command line in FILE and exits.

# sfvmm_run CMDLINE: sets has_run and run from sfvmm.run in CMDLINE.
sfvmm_run() {
	has_run= run=
	set -- " $1"
	case "$1" in
	*' sfvmm.run="'*)
		run=${1#*' sfvmm.run="'}
		run=${run%%\"*}
		has_run=1
		;;
	*' sfvmm.run='*)
		run=${1#*' sfvmm.run='}
		run=${run%%[ 	]*}
		has_run=1
		;;
	esac
}

if [ -n "${SFVMM_INIT_PARSE:-}" ]; then
	sfvmm_run "$(cat "$SFVMM_INIT_PARSE")"
	echo "has_run=$has_run run=$run"
	exit 0
fi

/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root TERM=${TERM:-linux}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null # the kernel may have mounted it
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts

echo "sfvmm-init: $(nproc) cpus"

cmdline=$(cat /proc/cmdline)
sfvmm_run "$cmdline"
if [ -n "$has_run" ]; then
	sh -c "$run"
	status=$?
	echo "sfvmm-init: command exited $status"
	case " $cmdline " in
	*' sfvmm.debugexit '*)
		[ "$status" -gt 127 ] && status=127
		printf "\\$(printf %o "$status")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
		;;
	esac
else
	echo "sfvmm-init: no sfvmm.run on the command line, starting a shell"
	setsid cttyhack sh -l
fi
# poweroff -f powers off only where the kernel knows how (ACPI S5); without
# it the kernel turns power-off into a halt and the VM hangs for ever. So
# reset instead there: sfvmm, like QEMU -no-reboot, ends the VM on a reset
# (reboot=t on the command line makes it a triple fault).
[ -d /sys/firmware/acpi ] && poweroff -f
reboot -f
