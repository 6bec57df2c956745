package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantPos []string
		wantOut string
	}{
		{[]string{"NAME", "--out", "d"}, []string{"NAME"}, "d"},
		{[]string{"--out", "d", "NAME"}, []string{"NAME"}, "d"},
		{[]string{"A", "--out=d", "B"}, []string{"A", "B"}, "d"},
		{[]string{"--out", "d", "--", "--x"}, []string{"--x"}, "d"},
		{nil, nil, ""},
	} {
		fs := NewFlagSet("t", "t", "", io.Discard)
		out := fs.String("out", "", "")
		pos, err := Parse(fs, tc.args)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if !reflect.DeepEqual(pos, tc.wantPos) || *out != tc.wantOut {
			t.Errorf("%v: got pos %q out %q, want %q %q", tc.args, pos, *out, tc.wantPos, tc.wantOut)
		}
	}
}

func TestParseBadFlagIsUsageError(t *testing.T) {
	fs := NewFlagSet("t", "t", "", io.Discard)
	fs.Int("n", 0, "")
	for _, args := range [][]string{{"--nope"}, {"--n", "x"}, {"--n"}} {
		_, err := Parse(fs, args)
		if !IsUsage(err) {
			t.Errorf("%v: got %v, want a usage error", args, err)
		}
	}
}

func TestParseHelp(t *testing.T) {
	var out bytes.Buffer
	fs := NewFlagSet("t", "t [flags]", "Does t.", &out)
	fs.String("out", "", "where to `DIR`")
	_, err := Parse(fs, []string{"--help"})
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("got %v, want flag.ErrHelp", err)
	}
	if !strings.Contains(out.String(), "Usage: t [flags]") || !strings.Contains(out.String(), "-out DIR") {
		t.Errorf("help output lacks usage or flags:\n%s", out.String())
	}
}

func TestMultiRejectsEmpty(t *testing.T) {
	var m Multi
	if err := m.Set("a,b"); err != nil {
		t.Fatal(err)
	}
	if err := m.Set("c,,d"); err == nil {
		t.Error("empty element accepted")
	}
	if got := m.String(); !strings.HasPrefix(got, "a,b,c") {
		t.Errorf("got %q", got)
	}
}

func TestProgramExitCodes(t *testing.T) {
	p := &Program{
		Name: "x", Summary: "x does things", Version: "x 1",
		Verbs: []Verb{
			{Name: "ok", Summary: "succeeds", Run: func(context.Context, []string, io.Writer, io.Writer) error { return nil }},
			{Name: "bad", Summary: "bad input", Run: func(context.Context, []string, io.Writer, io.Writer) error { return Usagef("no") }},
			{Name: "fail", Summary: "fails", Run: func(context.Context, []string, io.Writer, io.Writer) error { return errors.New("boom") }},
		},
	}
	for _, tc := range []struct {
		args    []string
		code    int
		wantOut string
		wantErr string
	}{
		{[]string{"ok"}, ExitOK, "", ""},
		{[]string{"bad"}, ExitUsage, "", "x: no\n"},
		{[]string{"fail"}, ExitFailure, "", "x: boom\n"},
		{[]string{"nosuch"}, ExitUsage, "", `unknown command "nosuch"`},
		{nil, ExitUsage, "", "missing command"},
		{[]string{"--version"}, ExitOK, "x 1\n", ""},
		{[]string{"--help"}, ExitOK, "succeeds", ""},
	} {
		var out, errb bytes.Buffer
		code := p.Main(context.Background(), tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(out.String(), tc.wantOut) || !strings.Contains(errb.String(), tc.wantErr) {
			t.Errorf("%v: code %d out %q err %q; want %d, %q, %q", tc.args, code, out.String(), errb.String(), tc.code, tc.wantOut, tc.wantErr)
		}
	}
}
