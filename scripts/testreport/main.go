// Command testreport reads `go test -json` events on stdin and prints a
// readable report: one line per package, the output of every failed test,
// every skipped test with the reason it gave, and a closing line
// "N passed, N failed, N skipped". It exits 1 if anything failed.
package main

import (
	"bufio"
	"encoding/json"
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
	Elapsed float64
}

type key struct{ pkg, test string }

func main() {
	os.Exit(run(os.Stdin, os.Stdout))
}

func run(in io.Reader, out io.Writer) int {
	outputs := map[key][]string{}
	var passed, failed, skipped int
	var failures, skips []string
	pkgFailed := false
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			fmt.Fprintln(out, string(line)) // not an event (e.g. a build error)
			continue
		}
		k := key{e.Package, e.Test}
		switch e.Action {
		case "output", "build-output":
			outputs[k] = append(outputs[k], e.Output)
		case "pass", "fail", "skip", "build-fail":
			if e.Test == "" {
				status := map[string]string{"pass": "ok  ", "fail": "FAIL", "skip": "?   ", "build-fail": "FAIL"}[e.Action]
				if e.Action != "pass" && e.Action != "skip" {
					pkgFailed = true
					if e.Action == "build-fail" || len(outputs[k]) > 0 {
						failures = append(failures, fmt.Sprintf("package %s:\n%s", e.Package, strings.Join(outputs[k], "")))
					}
				}
				fmt.Fprintf(out, "%s %s\t%.1fs\n", status, e.Package, e.Elapsed)
				continue
			}
			switch e.Action {
			case "pass":
				passed++
			case "fail":
				failed++
				failures = append(failures, fmt.Sprintf("%s %s:\n%s", e.Package, e.Test, strings.Join(outputs[k], "")))
			case "skip":
				skipped++
				skips = append(skips, fmt.Sprintf("%s %s: %s", short(e.Package), e.Test, reason(outputs[k])))
			}
			delete(outputs, k)
		}
	}
	if len(failures) > 0 {
		fmt.Fprintln(out, "\n==== failures ====")
		for _, f := range failures {
			fmt.Fprintln(out, f)
		}
	}
	if len(skips) > 0 {
		sort.Strings(skips)
		fmt.Fprintf(out, "\n==== %d skipped tests and why ====\n", len(skips))
		for _, s := range skips {
			fmt.Fprintln(out, "  "+s)
		}
	}
	fmt.Fprintf(out, "\n%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || pkgFailed {
		return 1
	}
	return 0
}

func short(pkg string) string {
	if i := strings.Index(pkg, "/pvc/"); i >= 0 {
		return pkg[i+5:]
	}
	return pkg
}

// reason picks the skip message out of a test's output: the lines between
// "=== RUN" and "--- SKIP", trimmed.
func reason(lines []string) string {
	var r []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		// drop the "file.go:12: " prefix that t.Skip adds
		if i := strings.Index(t, ".go:"); i >= 0 {
			if j := strings.Index(t[i+4:], ": "); j >= 0 {
				t = t[i+4+j+2:]
			}
		}
		r = append(r, t)
	}
	if len(r) == 0 {
		return "(no reason given)"
	}
	return strings.Join(r, " / ")
}
