package main

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var sfvmmBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sfvmm-cmd-test")
	if err != nil {
		panic(err)
	}
	sfvmmBin = filepath.Join(dir, "sfvmm")
	if out, err := exec.Command("go", "build", "-o", sfvmmBin, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// multibootBeyondRAM is a valid multiboot ELF32 whose only segment loads at
// 1 GiB, beyond the RAM of a small guest.
func multibootBeyondRAM() []byte {
	const (
		ehsize = 52
		phsize = 32
		load   = 1 << 30
	)
	img := make([]byte, 4096)
	copy(img, "\x7fELF")
	img[4], img[5], img[6] = 1, 1, 1 // ELFCLASS32, little-endian, version 1
	le := binary.LittleEndian
	le.PutUint16(img[16:], 2) // ET_EXEC
	le.PutUint16(img[18:], 3) // EM_386
	le.PutUint32(img[20:], 1) // version
	le.PutUint32(img[24:], load)
	le.PutUint32(img[28:], ehsize) // phoff
	le.PutUint16(img[40:], ehsize)
	le.PutUint16(img[42:], phsize)
	le.PutUint16(img[44:], 1) // phnum
	ph := img[ehsize:]
	le.PutUint32(ph[0:], 1)    // PT_LOAD
	le.PutUint32(ph[4:], 0)    // offset
	le.PutUint32(ph[8:], load) // vaddr
	le.PutUint32(ph[12:], load)
	le.PutUint32(ph[16:], 4096)
	le.PutUint32(ph[20:], 4096)
	le.PutUint32(ph[24:], 5)
	mb := img[256:]
	magic := uint32(0x1BADB002)
	le.PutUint32(mb[0:], magic)
	le.PutUint32(mb[4:], 0)      // flags
	le.PutUint32(mb[8:], -magic) // checksum: magic + flags + checksum == 0
	return img
}

// truncatedBzImage has a valid boot-protocol header promising far more
// setup code and kernel than the file holds. With SFVMM_LINUX_KERNEL set it
// is a real kernel cut short instead.
func truncatedBzImage(t *testing.T) []byte {
	if k := os.Getenv("SFVMM_LINUX_KERNEL"); k != "" {
		b, err := os.ReadFile(k)
		if err != nil {
			t.Fatal(err)
		}
		return b[:len(b)/3]
	}
	img := make([]byte, 2048)
	img[0x1f1] = 30 // setup_sects
	binary.LittleEndian.PutUint16(img[0x1fe:], 0xAA55)
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x020f)
	binary.LittleEndian.PutUint32(img[0x1f4:], 0x100000) // syssize in 16-byte units
	return img
}

func TestRefusesBadInput(t *testing.T) {
	random := make([]byte, 64<<10)
	rand.New(rand.NewSource(1)).Read(random)
	randomKernel := writeFile(t, "random.bin", random)
	truncated := writeFile(t, "bzImage.truncated", truncatedBzImage(t))
	beyond := writeFile(t, "beyond.elf", multibootBeyondRAM())
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"memory 0", []string{"--kernel", randomKernel, "--memory", "0"}, "--memory: guest memory of 0 bytes"},
		{"memory beyond host", []string{"--kernel", randomKernel, "--memory", "64T"}, "--memory: guest memory of 64 TiB: more than this host's"},
		{"memory garbage", []string{"--kernel", randomKernel, "--memory", "lots"}, "--memory: invalid size"},
		{"cpus 0", []string{"--kernel", randomKernel, "--cpus", "0"}, "--cpus: 0 vCPUs: must be between 1 and"},
		{"cpus negative", []string{"--kernel", randomKernel, "--cpus", "-3"}, "--cpus: -3 vCPUs"},
		{"no kernel", []string{}, "--kernel: no kernel given"},
		{"missing kernel", []string{"--kernel", "/nonexistent/vmlinuz"}, "no such file"},
		{"random kernel", []string{"--kernel", randomKernel}, "not a bzImage, multiboot or ELF64 kernel"},
		{"truncated bzImage", []string{"--kernel", truncated}, "truncated"},
		{"multiboot beyond RAM", []string{"--kernel", beyond, "--memory", "64M"}, "beyond RAM"},
		{"missing initrd", []string{"--kernel", beyond, "--initrd", "/nonexistent/initrd"}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(sfvmmBin, append([]string{"run"}, tc.args...)...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			ee, ok := err.(*exec.ExitError)
			if !ok {
				t.Fatalf("sfvmm run %v: %v, want exit status 1", tc.args, err)
			}
			if ee.ExitCode() != 1 {
				t.Errorf("exit status %d, want 1", ee.ExitCode())
			}
			msg := stderr.String()
			if !strings.Contains(msg, tc.want) {
				t.Errorf("stderr %q does not mention %q", msg, tc.want)
			}
			if strings.Contains(msg, "panic") || strings.Contains(msg, "goroutine") {
				t.Errorf("sfvmm panicked:\n%s", msg)
			}
			if stdout.Len() != 0 {
				t.Errorf("a refused guest printed %q", stdout.String())
			}
		})
	}
}
