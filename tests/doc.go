// Package tests holds sfvmm's integration tests. Those that boot guests
// need /dev/kvm, carry the `kvm` build tag and run through the nested
// sandbox (go run ./tests/kvmbox) on machines without KVM: `make test` does
// both. Without the tag the package has no tests.
package tests
