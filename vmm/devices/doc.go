// Package devices is the home of sfvmm's legacy platform devices, one small
// package each (serial, debugexit, i8042, rtc, fwcfg, acpipm), plus devtest,
// the helpers their tests share. This package holds no code: each device
// implements bus.Device and is wired up by the VMM core.
package devices
