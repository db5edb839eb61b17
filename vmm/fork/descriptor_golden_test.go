package fork

import (
	"encoding/binary"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sfvmm/sfvmm/vmm/snapshot"
	"github.com/sfvmm/sfvmm/vmm/snapshot/snaptest"
)

// The fork descriptor's encoding of Descriptor (the parent's MachineState
// and Info) is pinned per snapshot.Version in
// testdata/fork-descriptor-v<N>.{golden,schema} (see package snaptest), as
// package vmm pins a snapshot's: a change to Info or to MachineState needs
// a new version.
var update = flag.Bool("update", false, "write testdata/fork-descriptor-v<snapshot.Version>.{golden,schema} if this version has none")

// forkPinnedSince is the first snapshot.Version whose fork descriptor is
// pinned; its files and every later older version's stay in testdata.
const forkPinnedSince = 3

func TestForkDescriptorGolden(t *testing.T) {
	snaptest.Golden(t, snaptest.Pin{Name: "fork descriptor", Package: "./vmm/fork", State: &Descriptor{}, Update: *update})
}

// ReadDescriptor refuses every older version's golden fork descriptor as
// another version, naming both, and not as corrupt.
func TestForkDescriptorOlderVersions(t *testing.T) {
	for v := uint32(forkPinnedSince); v < snapshot.Version; v++ {
		path := snaptest.Path("fork descriptor", v, "golden")
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("older versions' golden fork descriptors stay in testdata: %v", err)
		}
		_, _, err := ReadDescriptor(path)
		snaptest.RefusedAsVersion(t, path, err, v)
	}
}

// ReadDescriptor returns a fork descriptor as it was encoded, and refuses
// anything else with an error that says what it is: another version
// (whatever its size), a snapshot, or something corrupt.
func TestReadDescriptor(t *testing.T) {
	var d Descriptor
	snaptest.Fill(&d)
	fork := encode(t, &d)
	snap := encode(t, &d.Machine)
	noServer := d
	noServer.Fork.Address = ""
	withVersion := func(v uint32) []byte {
		b := append([]byte(nil), fork...)
		binary.LittleEndian.PutUint32(b[8:], v) // after the magic; see package snapshot
		return b
	}
	corrupt := append([]byte(nil), fork...)
	corrupt[len(corrupt)/2] ^= 0xff
	isCorrupt := func(t *testing.T, err error) {
		t.Helper()
		if !errors.Is(err, snapshot.ErrCorrupt) || errors.Is(err, snapshot.ErrVersion) {
			t.Errorf("%v, want ErrCorrupt and not ErrVersion", err)
		}
	}
	says := func(msg string) func(*testing.T, error) {
		return func(t *testing.T, err error) {
			t.Helper()
			if err == nil || !strings.Contains(err.Error(), msg) {
				t.Errorf("%v, want %q", err, msg)
			}
		}
	}
	version := func(v uint32) func(*testing.T, error) {
		return func(t *testing.T, err error) {
			t.Helper()
			snaptest.RefusedAsVersion(t, "ReadDescriptor", err, v)
		}
	}
	for _, tc := range []struct {
		name string
		b    []byte
		size int64 // the file is extended to size (a hole) if larger than b
		want func(*testing.T, error)
	}{
		{"older version", withVersion(snapshot.Version - 1), 0, version(snapshot.Version - 1)},
		{"newer version", withVersion(snapshot.Version + 1), 0, version(snapshot.Version + 1)},
		{"newer version, oversized", withVersion(snapshot.Version + 1), MaxDescriptor + 1, version(snapshot.Version + 1)},
		{"oversized", fork, MaxDescriptor + 1, says("larger than any fork descriptor")},
		{"a snapshot", snap, 0, says("is a snapshot, not a fork descriptor")},
		{"no memory server", encode(t, &noServer), 0, says("is not a fork descriptor (it names no memory server)")},
		{"garbage", []byte("not a descriptor"), 0, isCorrupt},
		{"empty", nil, 0, isCorrupt},
		{"magic only", fork[:8], 0, isCorrupt},
		{"truncated", fork[:len(fork)-1], 0, isCorrupt},
		{"corrupt", corrupt, 0, isCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := ReadDescriptor(writeDescriptor(t, tc.b, tc.size))
			if got != nil {
				t.Errorf("returned a descriptor with %v", err)
			}
			tc.want(t, err)
		})
	}

	got, h, err := ReadDescriptor(writeDescriptor(t, fork, 0))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, &d) {
		t.Error("the fork descriptor reads back as another value")
	}
	if want := snaptest.Header(); h.CPUs != want.CPUs || h.MemBytes != want.MemBytes || len(h.Memory) != len(want.Memory) {
		t.Errorf("header %+v, want %+v", h, want)
	}
}

func encode(t *testing.T, state any) []byte {
	t.Helper()
	b, err := snapshot.Encode(snaptest.Header(), state)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeDescriptor writes b to a new file, extended with a hole to size if
// that is larger, and returns its path.
func writeDescriptor(t *testing.T, b []byte, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image.sfd")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if size > int64(len(b)) {
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
	}
	return path
}
