// Package snaptest pins the descriptor encoding of a VMM state type for
// each snapshot.Version, in golden files, for the tests of the packages
// whose state goes into descriptors: vmm (MachineState, in snapshots) and
// vmm/fork (Descriptor, in fork descriptors). It is a package rather than
// a _test file because those tests cannot share one (vmm's tests cannot
// import vmm/fork); it is imported by tests only, and nothing in the VMM
// depends on it.
//
// The codec is positional, with no field names: a field added to, removed
// from, moved or retyped anywhere in a state type changes the format, and
// a descriptor of the old format would be misread or refused as corrupt
// rather than as another version. So each version's format is pinned:
// <name>-v<N>.golden is the descriptor of a fixed, fully populated value
// (filled by reflection, so that a new field is in it without a test
// naming it), <name>-v<N>.schema its snapshot.Schema. A change to either
// needs a new snapshot.Version.
package snaptest

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/sfvmm/sfvmm/vmm/snapshot"
)

// Pin names a state type whose descriptor encoding a test pins.
type Pin struct {
	// Name is what the descriptor is called in messages ("fork
	// descriptor"); hyphenated, it prefixes the files in testdata.
	Name string
	// Package is the tested package as `go test` takes it ("./vmm"), for
	// the command that writes a new version's files.
	Package string
	// State points to a zero value of the state type; Golden fills it.
	State any
	// Update writes the files of snapshot.Version if it has none: the
	// test's -update flag. It never rewrites a version's files, so that a
	// format change made without a bump can never be blessed: it fails
	// whether or not -update is given.
	Update bool
}

// Path is the golden file of the descriptor called name, for version, of
// kind ext ("golden" or "schema"), relative to the test's directory.
func Path(name string, version uint32, ext string) string {
	return filepath.Join("testdata", fmt.Sprintf("%s-v%d.%s", strings.ReplaceAll(name, " ", "-"), version, ext))
}

// Golden fills p.State (see Fill), encodes it with Header, and checks the
// descriptor and the type's Schema against those pinned for
// snapshot.Version, and that the descriptor decodes back to the same
// value. Run it from a top-level test: the test's name goes into the
// command it prints.
func Golden(t *testing.T, p Pin) {
	t.Helper()
	zero := reflect.New(reflect.TypeOf(p.State).Elem()).Interface()
	schema, err := snapshot.Schema(zero)
	if err != nil {
		t.Fatal(err)
	}
	Fill(p.State)
	desc, err := snapshot.Encode(Header(), p.State)
	if err != nil {
		t.Fatal(err)
	}
	regenerate := fmt.Sprintf("`go test %s -run %s -update`", p.Package, t.Name())
	files := []struct {
		path string
		got  []byte
		diff func(got, want []byte) string
	}{
		{Path(p.Name, snapshot.Version, "golden"), desc, byteDiff},
		{Path(p.Name, snapshot.Version, "schema"), []byte(schema), lineDiff},
	}
	var missing []string
	for _, f := range files {
		if _, err := os.Stat(f.path); errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, f.path)
		}
	}
	switch {
	case len(missing) == len(files) && p.Update:
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := os.WriteFile(f.path, f.got, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %s", f.path)
		}
	case len(missing) == len(files):
		t.Fatalf("snapshot.Version %d has no %s: if it is a new version, write them with %s",
			snapshot.Version, strings.Join(missing, " or "), regenerate)
	case len(missing) > 0:
		t.Fatalf("%s is missing; -update writes a version's files only when it has none of them", strings.Join(missing, ", "))
	}
	for _, f := range files {
		want, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(f.got, want) {
			t.Errorf("%s: the %s format changed: bump snapshot.Version and regenerate with %s (which never rewrites an existing version's files)\n%s",
				f.path, p.Name, regenerate, f.diff(f.got, want))
		}
	}

	if _, err := snapshot.Decode(desc, zero); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(zero, p.State) {
		t.Errorf("the golden %s decodes to another value", p.Name)
	}
}

// RefusedAsVersion checks that err, from reading what (a file) whose
// descriptor is of version v, refuses it as another version: with
// snapshot.ErrVersion, not ErrCorrupt, naming both v and snapshot.Version,
// so that the user knows which sfvmm reads it.
func RefusedAsVersion(t testing.TB, what string, err error, v uint32) {
	t.Helper()
	if !errors.Is(err, snapshot.ErrVersion) || errors.Is(err, snapshot.ErrCorrupt) {
		t.Errorf("%s: %v, want ErrVersion and not ErrCorrupt", what, err)
		return
	}
	for _, n := range []uint32{v, snapshot.Version} {
		if !regexp.MustCompile(fmt.Sprintf(`\bversion %d\b`, n)).MatchString(err.Error()) {
			t.Errorf("%s: %q does not name version %d", what, err, n)
		}
	}
}

// Header is a fixed header with every field that Encode writes set: two
// RAM regions, with pages marked in each.
func Header() snapshot.Header {
	low, high := snapshot.NewBitmap(16), snapshot.NewBitmap(8)
	low.SetRange(0, 3)
	low.Set(9)
	high.SetRange(4, 4)
	return snapshot.Header{
		CPUs: 2, MemBytes: 24 * snapshot.PageSize, CreatedUnixNano: 1_800_000_000_123_456_789,
		RequiredCPUFeatures: []string{"sse2", "xsave"},
		Memory: []snapshot.MemoryRegion{
			{GPA: 0, Size: 16 * snapshot.PageSize, Pages: low},
			{GPA: 1 << 32, Size: 8 * snapshot.PageSize, Pages: high},
		},
	}
}

// Fill sets everything in the value ptr points to, deterministically and
// to non-zero values; each slice gets two elements. It leaves kinds the
// codec refuses alone, for Encode to report.
func Fill(ptr any) {
	(&filler{}).fill(reflect.ValueOf(ptr).Elem())
}

// filler sets values to a deterministic sequence of non-zero values.
type filler struct{ n uint64 }

// next returns the next value of the sequence, bits wide, never zero. The
// values differ from field to field and in every byte, so that two fields
// swapped, or one read at another width or offset, change the encoding.
func (f *filler) next(bits int) uint64 {
	f.n++
	if x := (f.n * 0x9e3779b97f4a7c15) >> (64 - bits); x != 0 {
		return x
	}
	return 1
}

func (f *filler) fill(v reflect.Value) {
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		bits := v.Type().Bits()
		v.SetInt(int64(f.next(bits)<<(64-bits)) >> (64 - bits)) // sign-extended
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(f.next(v.Type().Bits()))
	case reflect.String:
		v.SetString(fmt.Sprintf("s%x", f.next(64)))
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		fallthrough
	case reflect.Array:
		for i := range v.Len() {
			f.fill(v.Index(i))
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).Name != "_" {
				f.fill(v.Field(i))
			}
		}
	}
}

// byteDiff says where an encoding first differs from the golden one.
func byteDiff(got, want []byte) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	return fmt.Sprintf("the encoding is %d bytes, the golden file %d; they differ from byte %d", len(got), len(want), i)
}

// lineDiff shows the first line in which a schema differs from the pinned one.
func lineDiff(got, want []byte) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	i := 0
	for i < len(g) && i < len(w) && g[i] == w[i] {
		i++
	}
	line := func(l []string) string {
		if i < len(l) {
			return strings.TrimSpace(l[i])
		}
		return "(end)"
	}
	return fmt.Sprintf("schema line %d is %q, pinned %q", i+1, line(g), line(w))
}
