package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/pvc-project/pvc/internal/cli"
)

func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"up", "--kinds", "cone,fullcone"}, `unknown site kind "fullcone"`},
		{[]string{"up", "--rate", "fast"}, `rate "fast"`},
		{[]string{"up", "--loss", "1.5"}, "loss 1.5"},
		{[]string{"up", "--hosts", "0"}, "--hosts 0"},
		{[]string{"up", "--internet", "B1"}, `Internet host name "B1"`},
		{[]string{"tour", "--internet", "b1"}, "needs two Internet hosts"},
		{[]string{"up", "extra"}, `unexpected argument "extra"`},
		{[]string{"sweep", "x"}, `unexpected argument "x"`},
		{[]string{"destroy"}, `unknown command "destroy"`},
	} {
		var out, errb bytes.Buffer
		code := program().Main(context.Background(), tc.args, &out, &errb)
		if code != cli.ExitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if code := program().Main(context.Background(), []string{"up", "--help"}, &out, &out); code != 0 || !strings.Contains(out.String(), "-kinds KINDS") {
		t.Errorf("up --help: exit %d:\n%s", code, out.String())
	}
}
