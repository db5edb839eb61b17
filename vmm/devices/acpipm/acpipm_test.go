package acpipm

import (
	"testing"

	"github.com/sfvmm/sfvmm/vmm/devices/devtest"
)

func TestSleep(t *testing.T) {
	slp := func(typ uint64) uint64 { return typ<<cntSlpTypPos | cntSlpEn }
	tests := []struct {
		name     string
		offset   uint64
		data     []byte
		poweroff bool
	}{
		{"S5 word write", PM1aCntBlk - PM1aEvtBlk, devtest.Bytes(slp(SlpTypS5)|cntSCIEn, 2), true},
		{"S5 byte write to the high half", PM1aCntBlk - PM1aEvtBlk + 1, devtest.Bytes(slp(SlpTypS5)>>8, 1), true},
		{"S5 dword write", PM1aCntBlk - PM1aEvtBlk, devtest.Bytes(slp(SlpTypS5), 4), true},
		{"S5 dword write from PM1_EN", 2, devtest.Bytes(slp(SlpTypS5)<<16, 4), true},
		{"SLP_TYP 5 without SLP_EN", PM1aCntBlk - PM1aEvtBlk, devtest.Bytes(SlpTypS5<<cntSlpTypPos, 2), false},
		{"S3 ignored", PM1aCntBlk - PM1aEvtBlk, devtest.Bytes(slp(1), 2), false},
		{"S0 ignored", PM1aCntBlk - PM1aEvtBlk, devtest.Bytes(slp(0), 2), false},
		{"low byte only", PM1aCntBlk - PM1aEvtBlk, []byte{0xff}, false},
		{"status write", 0, devtest.Bytes(0xffff, 2), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := 0
			New(func() { n++ }, nil).Write(tc.offset, tc.data)
			if got := n == 1; got != tc.poweroff {
				t.Errorf("poweroff called %d times", n)
			}
		})
	}
}

// TestLinuxPowerOff follows acpi_hw_legacy_sleep: clear WAK_STS, write
// SLP_TYP, then SLP_TYP|SLP_EN, read-modify-write on PM1_CNT.
func TestLinuxPowerOff(t *testing.T) {
	n := 0
	d := New(func() { n++ }, nil)
	cnt := []byte{0, 0}
	d.Read(PM1aCntBlk-PM1aEvtBlk, cnt)
	v := devtest.Value(cnt)
	if v&cntSCIEn == 0 {
		t.Fatalf("PM1_CNT = %#x: SCI_EN clear, Linux would try to enter ACPI mode", v)
	}
	d.Write(0, devtest.Bytes(0x8000, 2))
	v = v&^(cntSlpTyp|cntSlpEn) | SlpTypS5<<cntSlpTypPos
	d.Write(PM1aCntBlk-PM1aEvtBlk, devtest.Bytes(v, 2))
	if n != 0 {
		t.Fatal("powered off before SLP_EN")
	}
	d.Write(PM1aCntBlk-PM1aEvtBlk, devtest.Bytes(v|cntSlpEn, 2))
	if n != 1 {
		t.Fatalf("poweroff called %d times, want 1", n)
	}
	d.Read(PM1aCntBlk-PM1aEvtBlk, cnt)
	if got := devtest.Value(cnt); got != SlpTypS5<<cntSlpTypPos|cntSCIEn {
		t.Errorf("PM1_CNT reads %#x after sleep: SLP_EN is write-only", got)
	}
}

func TestStatusEnable(t *testing.T) {
	d := New(nil, nil)
	if err := d.Restore(State{Status: 0x8101}); err != nil {
		t.Fatal(err)
	}
	d.Write(0, devtest.Bytes(0x0100, 2)) // clear PWRBTN_STS only
	b := []byte{0, 0, 0, 0}
	d.Read(0, b)
	if sts := devtest.Value(b[:2]); sts != 0x8001 {
		t.Errorf("PM1_STS = %#x after clearing bit 8, want %#x", sts, 0x8001)
	}
	d.Write(2, devtest.Bytes(0xffff, 2))
	d.Read(2, b[:2])
	if en := devtest.Value(b[:2]); en != enMask {
		t.Errorf("PM1_EN = %#x, want the defined bits %#x", en, enMask)
	}
	d.Read(6, b[:2])
	if v := devtest.Value(b[:2]); v != 0 {
		t.Errorf("unused ports read %#x", v)
	}
}

func TestSaveRestore(t *testing.T) {
	d := New(nil, nil)
	d.Write(2, devtest.Bytes(0x0121, 2))
	d.Write(4, devtest.Bytes(1<<cntSlpTypPos|cntBMRld, 2))
	fresh := New(nil, nil)
	if s := devtest.RoundTrip(t, d, fresh); s.Enable != 0x0121 || s.Control != 1<<cntSlpTypPos|cntBMRld {
		t.Errorf("saved %+v", s)
	}
	if err := fresh.Restore(State{Control: cntSlpEn}); err == nil {
		t.Error("Restore accepted SLP_EN")
	}
}

func FuzzACPIPM(f *testing.F) {
	f.Add([]byte{7, 4, 0x00, 0x34, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > devtest.MaxFuzzInput {
			return
		}
		d := New(func() {}, nil)
		devtest.Drive(d, Size, b)
		devtest.RoundTrip(t, d, New(nil, nil))
	})
}

// A GPE raised by the VMM holds the SCI up while the guest has it enabled
// and until the guest clears its status; a restored block raises it again.
func TestGPE(t *testing.T) {
	var sci bool
	sets := 0
	d := New(nil, func(l bool) { sci = l; sets++ })
	g := uint64(GPE0Blk - PM1aEvtBlk)
	d.RaiseGPE(0)
	if sci {
		t.Error("SCI up for a GPE the guest has not enabled")
	}
	d.Write(g+1, []byte{1})
	if !sci {
		t.Error("SCI down with GPE 0 raised and enabled")
	}
	b := []byte{0, 0}
	d.Read(g, b)
	if b[0] != 1 || b[1] != 1 {
		t.Errorf("GPE0 status, enable = %#x, %#x, want 1, 1", b[0], b[1])
	}
	n := sets
	d.Write(0, []byte{0, 0}) // a PM1 write that changes no GPE
	if sets != n {
		t.Errorf("a write that leaves the SCI's level as it was set the line again")
	}
	s, _ := d.Save()
	d.Write(g, []byte{1}) // the guest's handler clears the status
	if sci {
		t.Error("SCI still up after the status was cleared")
	}
	var sci2 bool
	if err := New(nil, func(l bool) { sci2 = l }).Restore(s); err != nil || !sci2 {
		t.Errorf("restore of a pending GPE: %v, SCI %v", err, sci2)
	}
}
