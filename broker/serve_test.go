package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/pvc-project/pvc/internal/cli"
)

func TestServeFlagsBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--state", "/tmp/x"}, "--listen HOST:PORT is required"},
		{[]string{"--listen", "203.0.113.10:7000"}, "--state DIR is required"},
		{[]string{"--listen", "nonsense", "--state", "d"}, `--listen "nonsense": want IP:PORT`},
		{[]string{"--listen", "203.0.113.10:0", "--state", "d"}, "port 0 is not allowed"},
		{[]string{"--listen", "203.0.113.10:7000", "--udp", "x:y", "--state", "d"}, `--udp "x:y"`},
		{[]string{"--listen", "203.0.113.10:7000", "--state", "d", "--peer-broker", "203.0.113.11"}, `--peer-broker "203.0.113.11"`},
		{[]string{"--listen", "203.0.113.10:7000", "--state", "d", "extra"}, `unexpected argument "extra"`},
		{[]string{"--bogus"}, "flag provided but not defined: -bogus"},
	} {
		var out, errb bytes.Buffer
		code := program().Main(context.Background(), tc.args, &out, &errb)
		if code != cli.ExitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and %q", tc.args, code, errb.String(), tc.want)
		}
		if n := strings.Count(errb.String(), "\n"); n > 2 {
			t.Errorf("%v: error is %d lines, want one line plus the hint", tc.args, n)
		}
	}
}

func TestServeFlagsGood(t *testing.T) {
	cfg, err := parseServe([]string{"--listen", "203.0.113.10:7000", "--state", "d", "--peer-broker", "203.0.113.11:7000,203.0.113.12:7000"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.UDP != cfg.Listen {
		t.Errorf("UDP defaults to %v, want the listen address %v", cfg.UDP, cfg.Listen)
	}
	if len(cfg.PeerBroks) != 2 {
		t.Errorf("got %d peer brokers, want 2", len(cfg.PeerBroks))
	}
}

func TestVersionAndHelp(t *testing.T) {
	var out bytes.Buffer
	if code := program().Main(context.Background(), []string{"--version"}, &out, &out); code != 0 || !strings.HasPrefix(out.String(), "pvc-broker ") {
		t.Errorf("--version: exit %d, %q", code, out.String())
	}
	out.Reset()
	if code := program().Main(context.Background(), []string{"serve", "--help"}, &out, &out); code != 0 || !strings.Contains(out.String(), "-listen HOST:PORT") {
		t.Errorf("serve --help: exit %d, %q", code, out.String())
	}
}
