// Command testsummary reads `go test -json` (test2json) event streams and
// prints one closing line counting every test and subtest:
//
//	tests: 57 passed, 0 failed, 0 skipped
//
// It lists the failed and skipped tests above that line and exits non-zero
// when any test failed or no test ran. make test ends with it so that a
// reader sees how many tests ran, host and sandbox together.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

type counts struct {
	passed, failed, skipped []string
	badPkgs                 []string
	output                  map[string][]string // test name -> its output lines
	pkgLines                []string            // each package's closing line
}

func (c *counts) read(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue // build output and other noise between events
		}
		name := e.Package + "." + e.Test
		if e.Action == "output" {
			if e.Test != "" {
				c.output[name] = append(c.output[name], e.Output)
			} else if strings.HasPrefix(e.Output, "ok ") || strings.HasPrefix(e.Output, "FAIL") ||
				strings.HasPrefix(e.Output, "?") {
				c.pkgLines = append(c.pkgLines, e.Output)
			}
		}
		switch {
		case e.Test == "" && e.Action == "fail":
			c.badPkgs = append(c.badPkgs, e.Package)
		case e.Test == "":
		case e.Action == "pass":
			c.passed = append(c.passed, name)
		case e.Action == "fail":
			c.failed = append(c.failed, name)
		case e.Action == "skip":
			c.skipped = append(c.skipped, name)
		}
	}
	return sc.Err()
}

func main() {
	brief := flag.Bool("brief", false, "print each package's result line and the failed tests' output, without the closing count")
	flag.Parse()
	c := counts{output: map[string][]string{}}
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: testsummary [-brief] FILE.json...")
		os.Exit(2)
	}
	for _, p := range flag.Args() {
		f, err := os.Open(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testsummary:", err)
			os.Exit(2)
		}
		err = c.read(f)
		f.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "testsummary: %s: %v\n", p, err)
			os.Exit(2)
		}
	}
	if *brief {
		for _, l := range c.pkgLines {
			fmt.Print(l)
		}
		sort.Strings(c.failed)
		for _, n := range c.failed {
			fmt.Printf("--- output of failed %s:\n%s", n, strings.Join(c.output[n], ""))
		}
		return
	}
	for _, l := range []struct {
		what  string
		names []string
	}{{"FAILED", c.failed}, {"SKIPPED", c.skipped}, {"FAILED PACKAGE", c.badPkgs}} {
		sort.Strings(l.names)
		for _, n := range l.names {
			fmt.Printf("%s %s\n", l.what, n)
		}
	}
	fmt.Printf("tests: %d passed, %d failed, %d skipped\n", len(c.passed), len(c.failed), len(c.skipped))
	if len(c.failed) > 0 || len(c.badPkgs) > 0 || len(c.passed) == 0 {
		os.Exit(1)
	}
}
