package snapshot

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func sampleRAM(t testing.TB, seed uint64) testRAM {
	return newTestRAM(t, seed, []int{256 * PageSize, 64 * PageSize}, []uint64{0, 1 << 32},
		[][2]uint64{{0, 8}, {5, 20}, {100, 50}})
}

// writeSample writes a snapshot of sampleState and sampleRAM(seed) to dir.
func writeSample(t *testing.T, dir string, seed uint64, opt WriteOptions) (testRAM, *testState, Info, error) {
	t.Helper()
	ram, st := sampleRAM(t, seed), sampleState()
	st.N = int(seed)
	info, err := Write(dir, Header{CPUs: 2, CreatedUnixNano: 1}, st, ram.regions, ram.bm, opt)
	return ram, st, info, err
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteReadLoad(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "snap")
	ram, st, info, err := writeSample(t, dir, 1, WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", info)
	want := Info{DescriptorBytes: info.DescriptorBytes, MemoryFileBytes: 320 * PageSize, Pages: 78, MemoryBytes: ram.written}
	if info != want {
		t.Errorf("Info %+v, want %+v", info, want)
	}
	if names := entries(t, parent); !reflect.DeepEqual(names, []string{"snap"}) {
		t.Errorf("parent holds %q, want only snap", names)
	}
	if names := entries(t, dir); !reflect.DeepEqual(names, []string{DescriptorFile, MemoryFile}) {
		t.Errorf("snapshot holds %q", names)
	}

	h, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h.CPUs != 2 || h.MemBytes != 320*PageSize || len(h.Memory) != 2 || h.Memory[1].GPA != 1<<32 {
		t.Errorf("Open header %+v", h)
	}
	var got testState
	h, err = Read(dir, &got)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&got, st) {
		t.Error("state read back differs")
	}
	for i, r := range h.Memory {
		if !r.Pages.Equal(ram.bm[i]) {
			t.Errorf("region %d bitmap differs", i)
		}
	}
	mem := ram.fresh()
	if err := Load(dir, h, mem); err != nil {
		t.Fatal(err)
	}
	sameRAM(t, mem, ram.regions)

	if err := Load(dir, h, mem[:1]); err == nil {
		t.Error("Load accepted a layout with a region missing")
	}
	mem[1].GPA += PageSize
	if err := Load(dir, h, mem); err == nil || !strings.Contains(err.Error(), "region 1 is") {
		t.Errorf("Load of a moved region: %v", err)
	}
}

func TestWriteExisting(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "snap")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// An empty directory is replaced.
	if _, _, _, err := writeSample(t, dir, 1, WriteOptions{}); err != nil {
		t.Fatalf("write over an empty dir: %v", err)
	}
	_, _, _, err := writeSample(t, dir, 2, WriteOptions{})
	if err == nil || !strings.Contains(err.Error(), "exists and is not empty") {
		t.Fatalf("write over a snapshot without Overwrite: %v", err)
	}
	var got testState
	if _, err := Read(dir, &got); err != nil || got.N != 1 {
		t.Fatalf("refused write changed the snapshot: N=%d, %v", got.N, err)
	}
	ram, _, _, err := writeSample(t, dir, 3, WriteOptions{Overwrite: true})
	if err != nil {
		t.Fatal(err)
	}
	h, err := Read(dir, &got)
	if err != nil || got.N != 3 {
		t.Fatalf("after Overwrite: N=%d, %v", got.N, err)
	}
	mem := ram.fresh()
	if err := Load(dir, h, mem); err != nil {
		t.Fatal(err)
	}
	sameRAM(t, mem, ram.regions)
	if names := entries(t, parent); !reflect.DeepEqual(names, []string{"snap"}) {
		t.Errorf("parent holds %q after Overwrite, want only snap", names)
	}
}

// A failure after the descriptor is written, as a crash there would be:
// no dir appears, and the temporary directory, even once complete, is not
// taken for a snapshot.
func TestWriteCrash(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "snap")
	crash := errors.New("injected crash")
	var tmpSeen string
	opt := WriteOptions{afterDescriptor: func(tmp string) error {
		tmpSeen = tmp
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s exists mid-write: %v", dir, err)
		}
		if !strings.HasPrefix(filepath.Base(tmp), "snap.tmp-") || filepath.Dir(tmp) != parent {
			t.Errorf("temporary dir %s is not snap.tmp-* beside snap", tmp)
		}
		if _, err := Open(tmp); err == nil {
			t.Errorf("Open accepted the half-written %s", tmp)
		}
		// Were the crash later, with both files in place, the name
		// alone would still be refused.
		ram := sampleRAM(t, 1)
		if _, err := WriteMemory(filepath.Join(tmp, MemoryFile), ram.regions, ram.bm); err != nil {
			t.Fatal(err)
		}
		_, err := Open(tmp)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "unfinished snapshot") {
			t.Errorf("Open of the complete temporary dir: %v", err)
		}
		return crash
	}}
	_, _, _, err := writeSample(t, dir, 1, opt)
	if !errors.Is(err, crash) {
		t.Fatalf("Write: %v, want the injected error", err)
	}
	if tmpSeen == "" {
		t.Fatal("hook did not run")
	}
	if _, err := Open(dir); err == nil {
		t.Error("Open accepted the dir of a failed write")
	}
	if names := entries(t, parent); len(names) != 0 {
		t.Errorf("failed write left %q", names)
	}
}

func TestOpenRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		harm func(dir string) error
		want string
	}{
		{"no descriptor", func(dir string) error { return os.Remove(filepath.Join(dir, DescriptorFile)) }, "no such file"},
		{"no memory file", func(dir string) error { return os.Remove(filepath.Join(dir, MemoryFile)) }, "no such file"},
		{"short memory file", func(dir string) error { return os.Truncate(filepath.Join(dir, MemoryFile), 3) },
			"memory file is 3 bytes, descriptor needs 1310720"},
		{"corrupt descriptor", func(dir string) error {
			p := filepath.Join(dir, DescriptorFile)
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b[len(b)/2] ^= 1
			return os.WriteFile(p, b, 0o600)
		}, "checksum mismatch"},
		{"oversized descriptor", func(dir string) error {
			return os.Truncate(filepath.Join(dir, DescriptorFile), maxDescriptorFile+1)
		}, "descriptor file of 1073741877 bytes exceeds"},
		{"foreign descriptor", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, DescriptorFile), []byte("#!/bin/sh\n"), 0o600)
		}, "bad magic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "snap")
			if _, _, _, err := writeSample(t, dir, 1, WriteOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := tc.harm(dir); err != nil {
				t.Fatal(err)
			}
			_, err := Open(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open: %v, want an error containing %q", err, tc.want)
			}
			if _, err := Read(dir, &testState{}); err == nil {
				t.Fatal("Read accepted what Open refused")
			}
			t.Log(err)
		})
	}
}

// replace is the fallback of Write's Overwrite on filesystems without
// RENAME_EXCHANGE.
func TestReplaceFallback(t *testing.T) {
	parent := t.TempDir()
	dir, next := filepath.Join(parent, "snap"), filepath.Join(parent, "next")
	if _, _, _, err := writeSample(t, dir, 1, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := writeSample(t, next, 2, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := replace(next, dir); err != nil {
		t.Fatal(err)
	}
	var got testState
	if _, err := Read(dir, &got); err != nil || got.N != 2 {
		t.Fatalf("after replace: N=%d, %v", got.N, err)
	}
	if names := entries(t, parent); !reflect.DeepEqual(names, []string{"snap"}) {
		t.Errorf("parent holds %q, want only snap", names)
	}
}
