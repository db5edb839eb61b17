package debugexit

import (
	"testing"

	"github.com/sfvmm/sfvmm/vmm/devices/devtest"
)

func TestExitCode(t *testing.T) {
	tests := []struct {
		name   string
		offset uint64
		data   []byte
		want   int // -1: no exit
	}{
		{"byte 3", 0, []byte{3}, 7},
		{"word 3", 0, []byte{3, 0}, 7},
		{"dword 3", 0, []byte{3, 0, 0, 0}, 7},
		{"byte 0", 0, []byte{0}, 1},
		{"byte 0xff", 0, []byte{0xff}, 0x1ff},
		{"word 0x1234", 0, []byte{0x34, 0x12}, 0x2469},
		{"dword max", 0, []byte{0xff, 0xff, 0xff, 0xff}, 0x1ffffffff},
		{"offset 2 as QEMU", 2, []byte{1}, 3},
		{"3-byte write ignored", 0, []byte{1, 2, 3}, -1},
		{"8-byte write ignored", 0, make([]byte, 8), -1},
		{"empty write ignored", 0, nil, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := -1
			New(func(code int) { got = code }).Write(tc.offset, tc.data)
			if got != tc.want {
				t.Errorf("exit code %#x, want %#x", got, tc.want)
			}
		})
	}
}

func TestReadAllOnes(t *testing.T) {
	d := New(nil)
	for _, n := range []int{1, 2, 4} {
		b := make([]byte, n)
		d.Read(0, b)
		if v := devtest.Value(b); v != 1<<(8*n)-1 {
			t.Errorf("%d-byte read = %#x, want all ones", n, v)
		}
	}
}

func TestSaveRestore(t *testing.T) {
	devtest.RoundTrip(t, New(nil), New(nil))
}
