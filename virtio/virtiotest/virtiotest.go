// Package virtiotest holds what tests of virtio devices share.
package virtiotest

import (
	"fmt"
	"unsafe"
)

// RAM is guest RAM at guest-physical address 0, for devices' tests.
type RAM []byte

// Slice returns [gpa, gpa+n) or an error when any of it is outside r.
func (r RAM) Slice(gpa, n uint64) ([]byte, error) {
	if gpa > uint64(len(r)) || n > uint64(len(r))-gpa {
		return nil, fmt.Errorf("[%#x, +%#x) outside RAM", gpa, n)
	}
	return r[gpa : gpa+n : gpa+n], nil
}

// Offset is where b, a non-empty slice of r, starts in r; -1 if b is not
// inside r.
func (r RAM) Offset(b []byte) int {
	o := int(uintptr(unsafe.Pointer(&b[0])) - uintptr(unsafe.Pointer(&r[0])))
	if uintptr(unsafe.Pointer(&b[0])) < uintptr(unsafe.Pointer(&r[0])) || o+len(b) > len(r) {
		return -1
	}
	return o
}
