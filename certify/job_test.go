package certify_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pvc-project/pvc/certify"
)

func TestParseJobFile(t *testing.T) {
	jf, err := certify.ParseJobFile([]byte("# BLAST\n\njob q01 blastn -query q01.fa  -db db/x -outfmt 6\r\n" +
		"  check known1 known1.expect blastn -query k1.fa\n\tjob q02\tsh -c 'echo a; echo b'\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := &certify.JobFile{
		Jobs: []certify.Job{
			{Name: "q01", Command: "blastn -query q01.fa  -db db/x -outfmt 6"},
			{Name: "q02", Command: "sh -c 'echo a; echo b'"},
		},
		Checks: []certify.Job{{Name: "known1", ExpectFile: "known1.expect", Command: "blastn -query k1.fa"}},
	}
	if !reflect.DeepEqual(jf, want) {
		t.Fatalf("got %+v\nwant %+v", jf, want)
	}
}

func TestParseJobFileRejects(t *testing.T) {
	for _, c := range []struct{ name, in, msg string }{
		{"empty", "", "no job lines"},
		{"only comments", "# x\n\n", "no job lines"},
		{"only checks", "check k k.out echo\n", "no job lines"},
		{"unknown keyword", "task a echo\n", `unknown keyword "task"`},
		{"no command", "job a\n", "missing COMMAND"},
		{"no name", "job\n", "job name"},
		{"bad name", "job ../x echo\n", "job name"},
		{"name starting with dash", "job -x echo\n", "job name"},
		{"long name", "job " + strings.Repeat("a", 65) + " echo\n", "job name"},
		{"duplicate", "job a echo\njob a echo\n", "already used on line 1"},
		{"duplicate across kinds", "job a echo\ncheck a a.out echo\n", "already used"},
		{"check without expect", "job b echo\ncheck a\n", "missing EXPECTFILE"},
		{"check without command", "job b echo\ncheck a a.out\n", "missing COMMAND"},
		{"control char", "job a echo \x1b[31m\n", "control character"},
		{"NUL", "job a echo\x00\n", "NUL"},
		{"not UTF-8", "job a echo \xff\n", "UTF-8"},
		{"line too long", "job a " + strings.Repeat("x", 70000) + "\n", "line 1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := certify.ParseJobFile([]byte(c.in))
			if err == nil || !errors.Is(err, certify.ErrJobFile) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err %v: want ErrJobFile saying %q", err, c.msg)
			}
		})
	}
}

func TestLoadJobFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "jobs")
	os.WriteFile(path, []byte("job a echo a\ncheck k sub/k.expect echo k\n"), 0o644)
	if _, err := certify.LoadJobFile(path); err == nil || !errors.Is(err, certify.ErrJobFile) || !strings.Contains(err.Error(), "check k") {
		t.Fatalf("missing expected answer: err %v", err)
	}
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "k.expect"), []byte("k\n"), 0o644)
	jf, err := certify.LoadJobFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if jf.Jobs[0].Dir != dir || jf.Checks[0].Dir != dir || string(jf.Checks[0].Expect) != "k\n" {
		t.Fatalf("loaded %+v", jf)
	}
	if _, err := certify.LoadJobFile(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: err %v", err)
	}
	if _, err := certify.LoadJobFile(filepath.Join(dir, "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: err %v", err)
	}
}

// FuzzParseJobFile: the parser never panics, and what it accepts writes
// back to a file that parses to the same jobs.
func FuzzParseJobFile(f *testing.F) {
	for _, s := range []string{
		"job a echo a\n", "job q01 blastn -query q01.fa -db db/x\ncheck k k.out echo k\n",
		"# c\n\njob a  x\ty\r\n", "job a\n", "check a b\n", "job a echo \xff", "job a.b-c_d sh -c 'x'\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		jf, err := certify.ParseJobFile(data)
		if err != nil {
			if !errors.Is(err, certify.ErrJobFile) {
				t.Fatalf("error %v does not wrap ErrJobFile", err)
			}
			return
		}
		again, err := certify.ParseJobFile([]byte(jf.String()))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", jf.String(), err)
		}
		if !reflect.DeepEqual(jf, again) {
			t.Fatalf("round trip: %+v != %+v", jf, again)
		}
		for _, j := range append(jf.Jobs, jf.Checks...) {
			if !certify.ValidJobName(j.Name) || j.Command == "" {
				t.Fatalf("accepted job %+v", j)
			}
		}
	})
}
