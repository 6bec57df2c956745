package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"

	"github.com/pvc-project/pvc/internal/cli"
)

// serveConfig is pvc-broker's configuration, parsed once from the flags.
type serveConfig struct {
	Listen    netip.AddrPort   // TCP address of the peer sessions; required
	UDP       netip.AddrPort   // UDP address for STUN and UDP relay; zero: same as Listen
	StateDir  string           // keys and registry; required
	PeerBroks []netip.AddrPort // other replicas to synchronise with
}

func parseServe(args []string, stdout io.Writer) (*serveConfig, error) {
	fs := cli.NewFlagSet("pvc-broker", "pvc-broker [serve] --listen HOST:PORT --state DIR [--udp HOST:PORT] [--peer-broker HOST:PORT]...",
		"Runs a broker replica in the foreground, logging to stderr, until SIGTERM or Ctrl-C.", stdout)
	listen := fs.String("listen", "", "TCP `HOST:PORT` for peer sessions (required)")
	udp := fs.String("udp", "", "UDP `HOST:PORT` for STUN and UDP relay (default: the --listen address)")
	state := fs.String("state", "", "`DIR` for the broker's key and registry, kept across restarts (required)")
	var peers cli.Multi
	fs.Var(&peers, "peer-broker", "`HOST:PORT` of another replica to synchronise with (repeatable, or comma-separated)")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) > 0 {
		return nil, cli.Usagef("unexpected argument %q", pos[0])
	}
	cfg := &serveConfig{StateDir: *state}
	if *listen == "" {
		return nil, cli.Usagef("--listen HOST:PORT is required")
	}
	if cfg.Listen, err = parseAddrPort("--listen", *listen); err != nil {
		return nil, err
	}
	cfg.UDP = cfg.Listen
	if *udp != "" {
		if cfg.UDP, err = parseAddrPort("--udp", *udp); err != nil {
			return nil, err
		}
	}
	if cfg.StateDir == "" {
		return nil, cli.Usagef("--state DIR is required")
	}
	for _, p := range peers {
		ap, err := parseAddrPort("--peer-broker", p)
		if err != nil {
			return nil, err
		}
		cfg.PeerBroks = append(cfg.PeerBroks, ap)
	}
	return cfg, nil
}

func parseAddrPort(flagName, s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, cli.Usagef("%s %q: want IP:PORT (e.g. 203.0.113.10:7000): %v", flagName, s, err)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, cli.Usagef("%s %q: port 0 is not allowed", flagName, s)
	}
	return ap, nil
}

// errNotBuilt is returned until the broker service exists.
var errNotBuilt = errors.New("the broker service is not built yet (see issue 'Broker service'); only the flags are checked")

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseServe(args, stdout)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	return errNotBuilt
}
