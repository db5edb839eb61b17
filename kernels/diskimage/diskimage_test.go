package diskimage

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The image holds the folder's files, as e2fsprogs' debugfs reads them.
func TestExt4(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "hello.txt"), []byte("hello from the host\n"), 0o644)
	img := filepath.Join(dir, "disk.img")
	if err := Ext4(img, src, 8<<20); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(img); st.Size() != 8<<20 {
		t.Errorf("image of %d bytes, want 8 MiB", st.Size())
	}
	out, err := exec.Command("/usr/sbin/debugfs", "-R", "cat /sub/hello.txt", img).Output()
	if err != nil || string(out) != "hello from the host\n" {
		t.Errorf("debugfs cat: %q, %v", out, err)
	}
	if err := Ext4(img, "", 1000); err == nil || !strings.Contains(err.Error(), "whole 4 KiB blocks") {
		t.Errorf("an image of 1000 bytes: %v", err)
	}
}
