package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/master"
)

func TestServeFlagsBadInput(t *testing.T) {
	good := func() []string { return []string{"--listen", "203.0.113.10:7000", "--state", "d"} }
	garbage := filepath.Join(t.TempDir(), "bad.cluster")
	os.WriteFile(garbage, []byte("not a bundle"), 0o644)
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
		{append(good(), "--metrics", "localhost:9100"), `--metrics "localhost:9100": want IP:PORT`},
		{append(good(), "--pprof", "localhost:6060"), `--pprof "localhost:6060": want IP:PORT`},
		{append(good(), "--bundle", "/nonexistent/lab.cluster"), "--bundle /nonexistent/lab.cluster: open"},
		{append(good(), "--bundle", garbage), "not a cluster bundle"},
		{append(good(), "--max-sessions", "0"), `--max-sessions "0": want a positive integer`},
		{append(good(), "--max-clusters", "x"), `--max-clusters "x": want a positive integer`},
		{append(good(), "--queue-frames", "-1"), `--queue-frames "-1": want a positive integer`},
		{append(good(), "--queue-bytes", "1e3"), `--queue-bytes "1e3": want a positive integer`},
		{append(good(), "--conn-rate", "-2"), `--conn-rate "-2": want a positive number`},
		{append(good(), "--enroll-rate", "NaN"), `--enroll-rate "NaN": want a positive number`},
		{append(good(), "--relay-rate", "fast"), `--relay-rate "fast": want a positive number`},
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

func TestServeRuns(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	m, err := master.Init(t.TempDir(), "lab", master.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bf := filepath.Join(t.TempDir(), "lab.cluster")
	os.WriteFile(bf, m.Bundle().Encode(), 0o644)
	state := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuffer
	done := make(chan int)
	go func() {
		done <- program().Main(ctx, []string{"--listen", addr, "--state", state, "--bundle", bf, "--max-sessions", "5"}, &out, &errb)
	}()
	for end := time.Now().Add(5 * time.Second); !strings.Contains(errb.String(), "broker running") && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	line := strings.TrimSpace(out.String())
	if _, err := bundle.ParseBroker(line); err != nil || !strings.HasPrefix(line, addr+"=") {
		t.Errorf("identity line %q: %v", line, err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("broker not listening: %v\n%s", err, errb.String())
	}
	c.Close()
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d on cancel: %s", code, errb.String())
	}
	if _, err := os.Stat(filepath.Join(state, "broker.key")); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(state, "clusters", "lab.cluster")); err != nil {
		t.Errorf("bundle not kept in the state dir: %v", err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
