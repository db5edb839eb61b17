package vmm

import (
	"bytes"
	"errors"
	"flag"
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

// The descriptor's encoding is positional, with no field names: a field
// added to, removed from, moved or retyped in any part of MachineState
// changes the format, and a descriptor of the old format would be misread
// or refused as corrupt rather than as another version. So each version's
// format is pinned in testdata: descriptor-v<N>.golden is the encoding of a
// fixed, fully populated MachineState, descriptor-v<N>.schema its
// snapshot.Schema. A change to either needs a new snapshot.Version.
//
// -update writes the files of the current version only if it has none, so
// that a format change made without a bump can never be blessed: it fails
// whether or not -update is given. Older versions' files stay, and
// TestDescriptorOlderVersions checks that each is refused as another
// version.
var update = flag.Bool("update", false, "write testdata/descriptor-v<snapshot.Version>.{golden,schema} if this version has none")

const formatChanged = "the descriptor format changed: bump snapshot.Version and regenerate with " +
	"`go test ./vmm -run TestDescriptorGolden -update` (which never rewrites an existing version's files)"

func goldenFile(version uint32, ext string) string {
	return filepath.Join("testdata", fmt.Sprintf("descriptor-v%d.%s", version, ext))
}

// goldenHeader is a fixed header with every field that Encode writes set.
func goldenHeader() snapshot.Header {
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

// goldenState is a MachineState with every field set, by filler, so that a
// field added anywhere is in the golden encoding without this test naming
// it.
func goldenState() *MachineState {
	var s MachineState
	(&filler{}).fill(reflect.ValueOf(&s).Elem())
	return &s
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

// fill sets v and everything in it; each slice gets two elements. It
// leaves kinds the codec refuses alone, for Encode to report.
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

func TestDescriptorGolden(t *testing.T) {
	state := goldenState()
	desc, err := snapshot.Encode(goldenHeader(), state)
	if err != nil {
		t.Fatal(err)
	}
	schema, err := snapshot.Schema(&MachineState{})
	if err != nil {
		t.Fatal(err)
	}
	files := []struct {
		path string
		got  []byte
		diff func(got, want []byte) string
	}{
		{goldenFile(snapshot.Version, "golden"), desc, byteDiff},
		{goldenFile(snapshot.Version, "schema"), []byte(schema), lineDiff},
	}
	var missing []string
	for _, f := range files {
		if _, err := os.Stat(f.path); errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, f.path)
		}
	}
	switch {
	case len(missing) == len(files) && *update:
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
		t.Fatalf("snapshot.Version %d has no %s: if it is a new version, write them with `go test ./vmm -run TestDescriptorGolden -update`",
			snapshot.Version, strings.Join(missing, " or "))
	case len(missing) > 0:
		t.Fatalf("%s is missing; -update writes a version's files only when it has none of them", strings.Join(missing, ", "))
	}
	for _, f := range files {
		want, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(f.got, want) {
			t.Errorf("%s: %s\n%s", f.path, formatChanged, f.diff(f.got, want))
		}
	}

	var got MachineState
	if _, err := snapshot.Decode(desc, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&got, state) {
		t.Error("the golden state decodes to another value")
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

// Every older version's golden descriptor, all of which stay in testdata,
// is refused as another version, naming both, and not as corrupt.
func TestDescriptorOlderVersions(t *testing.T) {
	for v := uint32(1); v < snapshot.Version; v++ {
		path := goldenFile(v, "golden")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("older versions' golden descriptors stay in testdata: %v", err)
		}
		_, decodeErr := snapshot.Decode(b, &MachineState{})
		_, headerErr := snapshot.DecodeHeader(b)
		for _, err := range []error{decodeErr, headerErr} {
			if !errors.Is(err, snapshot.ErrVersion) || errors.Is(err, snapshot.ErrCorrupt) {
				t.Fatalf("%s: %v, want ErrVersion and not ErrCorrupt", path, err)
			}
			for _, n := range []uint32{v, snapshot.Version} {
				if !regexp.MustCompile(fmt.Sprintf(`\bversion %d\b`, n)).MatchString(err.Error()) {
					t.Errorf("%s: %q does not name version %d", path, err, n)
				}
			}
		}
		t.Logf("%s: %v", path, decodeErr)
	}
}
