package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestModName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/arch/x86/kvm/kvm-amd.ko": "kvm_amd",
		"9pnet_virtio.ko":                "9pnet_virtio",
		"/x/veth.ko.xz":                  "veth",
		"kvm-amd":                        "kvm_amd",
	} {
		if got := modName(in); got != want {
			t.Errorf("modName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseModinfo(t *testing.T) {
	sec := []byte("license=GPL\x00depends=kvm,ccp\x00name=kvm_amd\x00\x00")
	if got, want := parseModinfo(sec), []string{"kvm", "ccp"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := parseModinfo([]byte("depends=\x00name=ccp\x00")); got != nil {
		t.Errorf("empty depends= gave %v", got)
	}
}

// The dependencies of the modules the sandbox loads, as in Debian 12's
// 6.1 kernel.
var debianDeps = map[string][]string{
	"kvm_amd":                {"kvm", "ccp"},
	"kvm":                    {"irqbypass"},
	"irqbypass":              nil,
	"ccp":                    nil,
	"9p":                     {"9pnet", "fscache", "netfs"},
	"9pnet":                  nil,
	"fscache":                {"netfs"},
	"netfs":                  nil,
	"9pnet_virtio":           {"virtio", "9pnet", "virtio_ring"},
	"virtio":                 nil,
	"virtio_ring":            nil,
	"virtio_pci":             {"virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"},
	"virtio_pci_modern_dev":  nil,
	"virtio_pci_legacy_dev":  nil,
	"bridge":                 {"llc", "stp"},
	"stp":                    {"llc"},
	"llc":                    nil,
	"unrelated_never_loaded": {"kvm"},
}

func TestLoadOrder(t *testing.T) {
	order, err := loadOrder(debianDeps, []string{"virtio_pci", "9pnet_virtio", "9p", "kvm-amd", "bridge"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range order {
		if _, dup := pos[m]; dup {
			t.Fatalf("%s loaded twice: %v", m, order)
		}
		pos[m] = i
	}
	for m := range pos {
		for _, d := range debianDeps[m] {
			if pos[d] > pos[m] {
				t.Errorf("%s comes before its dependency %s: %v", m, d, order)
			}
		}
	}
	if _, ok := pos["unrelated_never_loaded"]; ok || len(order) != len(debianDeps)-1 {
		t.Errorf("order %v: want every module but unrelated_never_loaded", order)
	}
}

func TestLoadOrderErrors(t *testing.T) {
	if _, err := loadOrder(debianDeps, []string{"nosuch"}); err == nil || !strings.Contains(err.Error(), "no module named nosuch") {
		t.Errorf("unknown module: err = %v", err)
	}
	broken := map[string][]string{"a": {"b"}, "b": {"gone"}}
	if _, err := loadOrder(broken, []string{"a"}); err == nil || !strings.Contains(err.Error(), "b needs gone") {
		t.Errorf("missing dependency: err = %v", err)
	}
	cyclic := map[string][]string{"a": {"b"}, "b": {"a"}}
	if _, err := loadOrder(cyclic, []string{"a"}); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: err = %v", err)
	}
}

// modules.dep as writeModulesDep writes it must read back to an order in
// which every module follows its dependencies.
func TestModulesDepRoundTrip(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko\n" +
		"kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko\n" +
		"kernel/virt/lib/irqbypass.ko:\n" +
		"kernel/drivers/crypto/ccp/ccp.ko:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	k := &kernel{Dir: dir}
	k.Release = "r"
	modDir := k.ModDir()
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "modules.dep"), filepath.Join(modDir, "modules.dep")); err != nil {
		t.Fatal(err)
	}
	got, err := k.modulePaths([]string{"kvm_amd"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range got {
		if !strings.HasPrefix(p, modDir+"/kernel/") {
			t.Errorf("path %s is not absolute under %s", p, modDir)
		}
		names = append(names, modName(p))
	}
	if want := []string{"irqbypass", "kvm", "ccp", "kvm_amd"}; !reflect.DeepEqual(names, want) {
		t.Errorf("load order %v, want %v", names, want)
	}
}
