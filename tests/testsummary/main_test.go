package main

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// readAll reads each event stream in turn, as main does its files.
func readAll(t *testing.T, streams ...string) *counts {
	c := &counts{output: map[string][]string{}, result: map[string]string{}, badPkgs: map[string]bool{}, short: map[string]string{}}
	for _, in := range streams {
		if err := c.read(strings.NewReader(in)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

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
	passed, failed, skipped := readAll(t, run1, run2).tally()
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

// A test that started and never ended (a -timeout panic, a crash) is
// failed, unless another run of it ended (a stalled sandbox's tests run
// again in a new one) or its output has its result (test2json held it
// back).
func TestUnfinished(t *testing.T) {
	const stalled = `{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"run","Package":"p","Test":"TestB"}
{"Action":"pass","Package":"p","Test":"TestB"}
{"Action":"run","Package":"p","Test":"TestC"}
{"Action":"output","Package":"p","Output":"panic: test timed out after 19m0s\n"}
`
	// test2json held TestD/sub's result back (no test started after it)
	// when the binary ended in TestD's cleanup; its output has the line.
	const heldBack = `{"Action":"run","Package":"a.b/p","Test":"TestD"}
{"Action":"run","Package":"a.b/p","Test":"TestD/sub"}
{"Action":"output","Package":"a.b/p","Test":"TestD/sub","Output":"    --- PASS: TestD/sub (0.50s)\n"}
{"Action":"output","Package":"a.b/p","Output":"panic: test timed out after 22m0s\n"}
`
	const again = `{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"pass","Package":"p","Test":"TestA"}
`
	passed, failed, _ := readAll(t, stalled, heldBack, again).tally()
	if want := []string{"p.TestA", "p.TestB", "a.b/p.TestD/sub"}; !reflect.DeepEqual(passed, want) {
		t.Errorf("passed: %v, want %v", passed, want)
	}
	if want := []string{"p.TestC", "a.b/p.TestD"}; !reflect.DeepEqual(failed, want) {
		t.Errorf("failed: %v, want %v", failed, want)
	}
	if e := excerpt("p.TestC", nil, true); !strings.Contains(e, "did not finish") {
		t.Errorf("excerpt of an unfinished test: %q", e)
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
