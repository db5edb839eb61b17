package mptable

import (
	"fmt"
	"strings"
	"testing"
)

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

func TestBuild(t *testing.T) {
	const base = 0xf0000
	for _, cpus := range []int{1, 2, 8, 255} {
		b, err := Build(base, cpus)
		if err != nil {
			t.Fatalf("Build(%d): %v", cpus, err)
		}
		fp := b[:16]
		if string(fp[:4]) != "_MP_" || fp[8] != 1 || fp[9] != 4 || sum(fp) != 0 {
			t.Fatalf("floating pointer % x (sum %#x)", fp, sum(fp))
		}
		cfgAddr := uint64(le.Uint32(fp[4:]))
		cfg := b[cfgAddr-base:]
		n := int(le.Uint16(cfg[4:]))
		if string(cfg[:4]) != "PCMP" || cfg[6] != 4 || n > len(cfg) {
			t.Fatalf("config header % x", cfg[:8])
		}
		cfg = cfg[:n]
		if s := sum(cfg); s != 0 {
			t.Errorf("config table checksum: sum %#x", s)
		}
		if le.Uint32(cfg[36:]) != 0xfee00000 {
			t.Errorf("local APIC address %#x", le.Uint32(cfg[36:]))
		}
		var cpuIDs []int
		var other []string
		entries := 0
		for p := cfg[44:]; len(p) > 0; entries++ {
			switch p[0] {
			case 0:
				if p[1] != byte(len(cpuIDs)) {
					t.Errorf("processor %d has APIC ID %d", len(cpuIDs), p[1])
				}
				wantFlags := byte(1)
				if len(cpuIDs) == 0 {
					wantFlags = 3 // enabled, BSP
				}
				if p[3] != wantFlags {
					t.Errorf("processor %d flags %#x, want %#x", len(cpuIDs), p[3], wantFlags)
				}
				cpuIDs = append(cpuIDs, int(p[1]))
				p = p[20:]
				continue
			case 1:
				other = append(other, fmt.Sprintf("bus%d:%s", p[1], p[2:8]))
			case 2:
				other = append(other, fmt.Sprintf("ioapic%d:%d:%#x", p[1], p[3], le.Uint32(p[4:])))
			case 3:
				if p[7] != 2 || p[5] != 0 { // everything but IRQ0 is identity
					if p[5] != p[7] {
						t.Errorf("IRQ %d routed to pin %d", p[5], p[7])
					}
				}
				if int(p[6]) != cpus {
					t.Errorf("IRQ %d routed to IOAPIC %d", p[5], p[6])
				}
				other = append(other, fmt.Sprintf("irq%d>%d", p[5], p[7]))
			case 4:
				other = append(other, fmt.Sprintf("lint%d:type%d:apic%#x", p[7], p[1], p[6]))
			default:
				t.Fatalf("unknown entry type %d", p[0])
			}
			p = p[8:]
		}
		if len(cpuIDs) != cpus {
			t.Errorf("%d processors, want %d", len(cpuIDs), cpus)
		}
		if got := int(le.Uint16(cfg[34:])); got != entries {
			t.Errorf("entry count %d, counted %d", got, entries)
		}
		want := fmt.Sprintf("bus0:ISA    ioapic%d:1:0xfec00000 irq0>0 irq1>1 irq2>2 irq3>3 irq4>4 irq5>5 irq6>6 irq7>7 irq8>8 irq9>9 irq10>10 irq11>11 irq12>12 irq13>13 irq14>14 irq15>15 lint0:type3:apic0xff lint1:type1:apic0xff", cpus)
		if got := strings.Join(other, " "); got != want {
			t.Errorf("entries:\n got %s\nwant %s", got, want)
		}
	}
}

func TestBuildRefuses(t *testing.T) {
	for _, tc := range []struct {
		base uint64
		cpus int
	}{{0xf0000, 0}, {0xf0000, 256}, {0xf0008, 1}, {1<<32 - 16, 1}} {
		if _, err := Build(tc.base, tc.cpus); err == nil {
			t.Errorf("Build(%#x, %d) succeeded", tc.base, tc.cpus)
		}
	}
}
