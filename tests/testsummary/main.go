// Command testsummary reads `go test -json` (test2json) event streams and
// prints one closing line counting every test and subtest:
//
//	tests: 57 passed, 0 failed, 0 skipped
//
// It lists the failed and skipped tests above that line and exits non-zero
// when any test failed or no test ran. make test ends with it so that a
// reader sees how many tests ran, host and sandbox together.
//
// A test reported more than once (the same test in two files) counts as
// failed if any of its runs failed: a failure is never hidden by a pass.
// A test that started and has no result in any file counts as failed too:
// its test binary ended while it ran (go test's -timeout panics without
// a result line for the tests it stops). test2json holds a subtest's
// result back until the next test starts, and never sends it if the
// binary ends first; the result line is still in the test's output, and
// counts.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
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
	result   map[string]string   // test name -> its result (pass, fail, skip, or run: no result yet); fail sticks
	order    []string            // test names in first-seen order
	badPkgs  map[string]bool     // packages whose last result was a failure
	output   map[string][]string // test name -> its output lines
	short    map[string]string   // test name -> the test's name without its package
	pkgLines []string            // each package's closing line
}

func (c *counts) record(name, action string) {
	prev, seen := c.result[name]
	if !seen {
		c.order = append(c.order, name)
	}
	if prev != "fail" {
		c.result[name] = action
	}
}

func (c *counts) tally() (passed, failed, skipped []string) {
	for _, n := range c.order {
		if c.result[n] == "run" {
			c.result[n] = resultInOutput(c.short[n], c.output[n])
		}
		switch c.result[n] {
		case "pass":
			passed = append(passed, n)
		case "fail", "run":
			failed = append(failed, n)
		case "skip":
			skipped = append(skipped, n)
		}
	}
	return passed, failed, skipped
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
		case e.Test == "" && (e.Action == "fail" || e.Action == "pass"):
			c.badPkgs[e.Package] = e.Action == "fail"
		case e.Test == "":
		case e.Action == "pass" || e.Action == "fail" || e.Action == "skip":
			c.record(name, e.Action)
		case e.Action == "run":
			if _, seen := c.result[name]; !seen {
				c.record(name, e.Action)
				c.short[name] = e.Test
			}
		}
	}
	return sc.Err()
}

// resultInOutput is the result that test printed in its output ("---
// PASS: Test/sub (1.00s)"), or "run" where there is none.
func resultInOutput(test string, out []string) string {
	re := regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): ` + regexp.QuoteMeta(test) + ` \(`)
	for _, l := range out {
		if m := re.FindStringSubmatch(l); m != nil {
			return strings.ToLower(m[1])
		}
	}
	return "run"
}

// excerpt is what a reader of a CI log's tail needs of a failed test: its
// failure messages (the first line of each) and the last lines of its
// output, which for a guest are the end of its serial console.
func excerpt(name string, out []string, unfinished bool) string {
	const tail = 8
	var b strings.Builder
	fmt.Fprintf(&b, "=== why %s failed:\n", name)
	if unfinished {
		b.WriteString("    it did not finish: its test binary ended while it ran (timed out or crashed)\n")
	}
	for _, l := range out {
		if failureLine.MatchString(l) && !strings.Contains(l, "bus.go:") {
			b.WriteString(clip(l))
		}
	}
	if len(out) > tail {
		b.WriteString("    ... its last lines:\n")
		out = out[len(out)-tail:]
	}
	for _, l := range out {
		b.WriteString(clip(l))
	}
	return b.String()
}

// failureLine matches the line testing prints for t.Error and t.Fatal, and
// a panic.
var failureLine = regexp.MustCompile(`^\s+\w+\.go:\d+: |^panic: |^fatal error: `)

// clip shortens a line to what fits a terminal.
func clip(l string) string {
	l = strings.TrimRight(l, "\n")
	if len(l) > 200 {
		l = l[:200] + "..."
	}
	return l + "\n"
}

func main() {
	brief := flag.Bool("brief", false, "print each package's result line and the failed tests' output, without the closing count")
	stallsFile := flag.String("stalls", "", "a file listing the nested sandbox's stalls, a line each (tests/kvmtest.sh writes it), to count in the summary")
	flag.Parse()
	c := counts{output: map[string][]string{}, result: map[string]string{}, badPkgs: map[string]bool{}, short: map[string]string{}}
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
	passed, failed, skipped := c.tally()
	var badPkgs []string
	for p, bad := range c.badPkgs {
		if bad {
			badPkgs = append(badPkgs, p)
		}
	}
	if *brief {
		for _, l := range c.pkgLines {
			fmt.Print(l)
		}
		sort.Strings(failed)
		for _, n := range failed {
			fmt.Printf("--- output of failed %s:\n%s", n, strings.Join(c.output[n], ""))
		}
		return
	}
	sort.Strings(failed)
	for i, n := range failed {
		// A test whose subtest failed says no more than the subtest.
		if i+1 < len(failed) && strings.HasPrefix(failed[i+1], n+"/") {
			continue
		}
		fmt.Print(excerpt(n, c.output[n], c.result[n] == "run"))
	}
	for _, l := range []struct {
		what  string
		names []string
	}{{"FAILED", failed}, {"SKIPPED", skipped}, {"FAILED PACKAGE", badPkgs}} {
		sort.Strings(l.names)
		for _, n := range l.names {
			fmt.Printf("%s %s\n", l.what, n)
		}
	}
	stalls := readStalls(*stallsFile)
	for _, l := range stalls {
		fmt.Printf("SANDBOX STALL %s\n", l)
	}
	fmt.Printf("tests: %d passed, %d failed, %d skipped", len(passed), len(failed), len(skipped))
	if *stallsFile != "" {
		fmt.Printf("; %d sandbox stalls", len(stalls))
	}
	fmt.Println()
	if len(failed) > 0 || len(badPkgs) > 0 || len(passed) == 0 {
		os.Exit(1)
	}
}

// readStalls returns the lines of the stalls file; a missing file is none.
func readStalls(path string) []string {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}
