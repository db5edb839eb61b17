package vmm

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/vmm/memory"
)

// ResidentGuestBytes counts the guest RAM pages present in host memory:
// the memory the guest (or the loader) has touched.
func (m *VM) ResidentGuestBytes() (uint64, error) {
	var total uint64
	for _, r := range m.mem.Regions() {
		vec := make([]byte, (r.Size+memory.PageSize-1)/memory.PageSize)
		if err := mincore(r.Host, vec); err != nil {
			return 0, fmt.Errorf("mincore guest RAM at %#x: %w", r.GPA, err)
		}
		for _, v := range vec {
			if v&1 != 0 {
				total += memory.PageSize
			}
		}
	}
	return total, nil
}

func mincore(b []byte, vec []byte) error {
	if len(b) == 0 {
		return nil
	}
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if e != 0 {
		return e
	}
	return nil
}
