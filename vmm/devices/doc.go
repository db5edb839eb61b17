// Package devices is the machine's table of emulated devices, and the
// home of each device's own package (serial, debugexit, i8042, rtc,
// fwcfg, acpipm, forkdev) plus devtest, the helpers their tests share.
//
// The table (Set) is the one place a device is added: its entry names it,
// gives its ranges on the port I/O bus and saves and restores its state
// into its field of States. The VMM registers, saves and restores what the
// table lists, and the round-trip and fuzz tests drive the same table.
// Each device's constants (ports, IRQ lines) live in its own package.
package devices
