package main

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestFailureSticks(t *testing.T) {
	const run1 = `{"Action":"pass","Package":"p","Test":"TestA"}
{"Action":"fail","Package":"p","Test":"TestB"}
{"Action":"skip","Package":"p","Test":"TestC"}
`
	const run2 = `{"Action":"pass","Package":"p","Test":"TestB"}
{"Action":"fail","Package":"p","Test":"TestA"}
not json: build output
{"Action":"pass","Package":"p","Test":"TestD"}
`
	c := counts{output: map[string][]string{}, result: map[string]string{}, badPkgs: map[string]bool{}}
	for _, in := range []string{run1, run2} {
		if err := c.read(strings.NewReader(in)); err != nil {
			t.Fatal(err)
		}
	}
	passed, failed, skipped := c.tally()
	for _, x := range []struct {
		what      string
		got, want []string
	}{
		{"passed", passed, []string{"p.TestD"}},
		{"failed", failed, []string{"p.TestA", "p.TestB"}},
		{"skipped", skipped, []string{"p.TestC"}},
	} {
		if !reflect.DeepEqual(x.got, x.want) {
			t.Errorf("%s: %v, want %v", x.what, x.got, x.want)
		}
	}
}

func TestReadStalls(t *testing.T) {
	p := t.TempDir() + "/stalls"
	if got := readStalls(p); got != nil {
		t.Errorf("missing file: %v", got)
	}
	if err := os.WriteFile(p, []byte("sandbox 0 stalled (try 1): TestA TestB\n\nsandbox 1 stalled (try 1): TestC\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	want := []string{"sandbox 0 stalled (try 1): TestA TestB", "sandbox 1 stalled (try 1): TestC"}
	if got := readStalls(p); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
