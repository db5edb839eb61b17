//go:build kvm

package tests

import (
	"testing"

	"github.com/sfvmm/sfvmm/vmm/kvm"
)

// The kvm package's ioctls must hand the kernel the address of the Go
// variable they fill or read even when the goroutine's stack moves on the
// way to the syscall (it grows, and is copied, at whatever call finds it
// full). Reading the registers at every depth of a recursion in fresh
// goroutines (small stacks) makes that happen; an address kept as a
// uintptr across the move left the variable untouched: zero registers, the
// fault seen in forks' saved state.
func TestKVMIoctlAcrossStackGrowth(t *testing.T) {
	sys, err := kvm.Open()
	if err != nil {
		t.Fatalf("open /dev/kvm: %v", err)
	}
	defer sys.Close()
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatalf("create VM: %v", err)
	}
	defer vm.Close()
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatalf("create vCPU: %v", err)
	}
	defer c.Close()
	want := kvm.Regs{RAX: 0x1111, RBX: 0x2222, RSP: 0x7000, RIP: 0x100864, RFLAGS: 2}
	if err := c.SetRegs(want); err != nil {
		t.Fatalf("set regs: %v", err)
	}

	var depth func(n int, pad [64]byte) error
	depth = func(n int, pad [64]byte) error {
		got, err := c.GetRegs()
		if err != nil {
			return err
		}
		if got != want {
			t.Errorf("at depth %d: GetRegs = rip %#x rsp %#x rax %#x, want rip %#x rsp %#x rax %#x",
				n, got.RIP, got.RSP, got.RAX, want.RIP, want.RSP, want.RAX)
			return nil
		}
		if err := c.SetRegs(want); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		pad[n%64] = byte(n)
		return depth(n-1, pad)
	}
	for round := 0; round < 20 && !t.Failed(); round++ {
		done := make(chan error)
		go func() { done <- depth(300, [64]byte{}) }()
		if err := <-done; err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
}
