package snapshot

import (
	"strings"
	"testing"
	"time"
)

func TestSchema(t *testing.T) {
	got, err := Schema(&struct {
		N    int
		Tags []string
		Pads [2]struct {
			X  uint16
			_  [2]byte
			On bool
		}
		Leaves []testLeaf
		Empty  struct{}
	}{})
	if err != nil {
		t.Fatal(err)
	}
	want := `struct {
	N int64
	Tags []string
	Pads [2]struct {
		X uint16
		On bool
	}
	Leaves []struct {
		A uint8
		B uint8
	}
	Empty struct {}
}
`
	if got != want {
		t.Errorf("Schema:\n%s\nwant:\n%s", got, want)
	}
}

type schemaElem struct {
	C string
	D [4]uint8
}

// Every change to a type's encoding, and a renamed field, changes its
// schema; what leaves the encoding and the field names alone does not.
func TestSchemaChanges(t *testing.T) {
	type base struct {
		A uint32
		B []struct {
			C string
			D [4]uint8
		}
	}
	for _, tc := range []struct {
		name  string
		other any
		same  bool
	}{
		{"field added", &struct {
			A uint32
			B []struct {
				C string
				D [4]uint8
			}
			E bool
		}{}, false},
		{"field added to a slice element", &struct {
			A uint32
			B []struct {
				C string
				D [4]uint8
				E bool
			}
		}{}, false},
		{"field removed", &struct{ A uint32 }{}, false},
		{"fields reordered", &struct {
			B []struct {
				C string
				D [4]uint8
			}
			A uint32
		}{}, false},
		{"field retyped", &struct {
			A int32
			B []struct {
				C string
				D [4]uint8
			}
		}{}, false},
		{"field renamed", &struct {
			Z uint32
			B []struct {
				C string
				D [4]uint8
			}
		}{}, false},
		{"array length", &struct {
			A uint32
			B []struct {
				C string
				D [5]uint8
			}
		}{}, false},
		{"slice made an array", &struct {
			A uint32
			B [1]struct {
				C string
				D [4]uint8
			}
		}{}, false},
		{"named element type", &struct {
			A uint32
			B []schemaElem
		}{}, true},
		{"named struct type", &base{}, true},
		{"blank field added", &struct {
			A uint32
			_ [4]byte
			B []struct {
				C string
				D [4]uint8
			}
		}{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := Schema(&struct {
				A uint32
				B []struct {
					C string
					D [4]uint8
				}
			}{})
			if err != nil {
				t.Fatal(err)
			}
			b, err := Schema(tc.other)
			if err != nil {
				t.Fatal(err)
			}
			if (a == b) != tc.same {
				t.Errorf("same schema: %v, want %v\n%s\n%s", a == b, tc.same, a, b)
			}
		})
	}
}

// Types that encode alike have one schema.
func TestSchemaSameEncoding(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b any
	}{
		{"int and int64", &struct{ N int }{}, &struct{ N int64 }{}},
		{"uint and uint64", &struct{ N uint }{}, &struct{ N uint64 }{}},
		{"time.Duration and int64", &struct{ D time.Duration }{}, &struct{ D int64 }{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, errA := Schema(tc.a)
			b, errB := Schema(tc.b)
			if errA != nil || errB != nil || a != b {
				t.Errorf("schemas differ:\n%s%v\n%s%v", a, errA, b, errB)
			}
		})
	}
}

func TestSchemaRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state any
		want  string
	}{
		{"map", &struct {
			A [1]struct {
				OK uint8
				M  map[int]int
			}
		}{}, "schema: state.A[].M: map[int]int is a map"},
		{"not a pointer", struct{}{}, "want a non-nil pointer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Schema(tc.state); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Schema: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
