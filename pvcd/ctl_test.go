package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/pvcd/control"
)

type ctlBackend struct{ down chan struct{} }

func (b *ctlBackend) Status() control.Status {
	return control.Status{Cluster: "lab", Name: "n1", VirtualIP: netip.MustParseAddr("240.1.0.1"), Interface: "pvc0", Since: time.Now(),
		Brokers: []control.BrokerStatus{{Addr: "203.0.113.10:7000", Connected: true, Observed: "203.0.113.101:40000"}}}
}
func (b *ctlBackend) Peers() []control.Peer {
	return []control.Peer{{Name: "n2", VirtualIP: netip.MustParseAddr("240.1.0.2"), Path: "relay", Why: "ice failed: no answer"}}
}
func (b *ctlBackend) Ping(ctx context.Context, peer string) (control.PingResult, error) {
	if peer != "n2" {
		return control.PingResult{}, fmt.Errorf("%w %q", control.ErrUnknownPeer, peer)
	}
	return control.PingResult{Peer: "n2", IP: netip.MustParseAddr("240.1.0.2"), Path: "relay", RTT: 1500 * time.Microsecond}, nil
}
func (b *ctlBackend) Down() { close(b.down) }

func runPvcd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := program().Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestControlVerbs(t *testing.T) {
	dir := t.TempDir()
	b := &ctlBackend{down: make(chan struct{})}
	srv, err := control.Listen(dir, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "--state-dir", dir}, "n1.lab  240.1.0.1 on pvc0"},
		{[]string{"status", "--state-dir", dir}, "sees us as 203.0.113.101:40000"},
		{[]string{"status", "--json", "--state-dir", dir}, `"virtual_ip": "240.1.0.1"`},
		{[]string{"peers", "--state-dir", dir}, "n2    240.1.0.2"},
		{[]string{"peers", "--state-dir", dir}, "why not better:\n  n2: ice failed: no answer"},
		{[]string{"peers", "--json", "--state-dir", dir}, `"path": "relay"`},
		{[]string{"ping", "n2", "--state-dir", dir}, "n2 (240.1.0.2) via relay: 1.50 ms"},
		{[]string{"down", "--state-dir", dir}, "is shutting down"},
	} {
		code, out, errs := runPvcd(tc.args...)
		if code != 0 || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d, out %q, err %q; want %q", tc.args, code, out, errs, tc.want)
		}
	}
	select {
	case <-b.down:
	default:
		t.Error("down did not reach the daemon")
	}
	if code, _, errs := runPvcd("ping", "ghost", "--state-dir", dir); code != cli.ExitFailure || !strings.Contains(errs, `unknown peer "ghost"`) {
		t.Errorf("ping ghost: exit %d, %q", code, errs)
	}
}

func TestControlVerbsBadInput(t *testing.T) {
	empty := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"status", "--state-dir", empty}, cli.ExitFailure, "pvcd is not running (no control socket at"},
		{[]string{"ping", "--state-dir", empty}, cli.ExitUsage, "usage: pvcd ping PEER"},
		{[]string{"ping", "a", "b", "--state-dir", empty}, cli.ExitUsage, "usage: pvcd ping PEER"},
		{[]string{"peers", "extra"}, cli.ExitUsage, `unexpected argument "extra"`},
		{[]string{"down", "--json"}, cli.ExitUsage, "flag provided but not defined: -json"},
	} {
		code, _, errs := runPvcd(tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, %q; want %d and %q", tc.args, code, errs, tc.code, tc.want)
		}
	}
}
