package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strconv"

	"github.com/pvc-project/pvc/broker/server"
	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/security/bundle"
)

// serveConfig is pvc-broker's configuration, parsed once from the flags.
type serveConfig struct {
	Listen    netip.AddrPort   // TCP address of the peer sessions; required
	UDP       netip.AddrPort   // UDP address for STUN; zero: same as Listen
	StateDir  string           // keys and registry; required
	PeerBroks []netip.AddrPort // other replicas to synchronise with
	Metrics   netip.AddrPort   // Prometheus text endpoint; zero: none
	Pprof     netip.AddrPort   // Go's net/http/pprof endpoint (profiling); zero: none
	Bundles   [][]byte         // cluster bundles to serve (checked)
	Limits    server.Limits    // zero fields: the server's defaults
}

func parseServe(args []string, stdout io.Writer) (*serveConfig, error) {
	fs := cli.NewFlagSet("pvc-broker", "pvc-broker [serve] --listen HOST:PORT --state DIR [--udp HOST:PORT] [--peer-broker HOST:PORT]... [--bundle FILE]... [--metrics HOST:PORT]",
		"Runs a broker replica in the foreground, logging to stderr, until SIGTERM or Ctrl-C.\nPrints its identity (HOST:PORT=KEY, as `pvcd cluster init --broker` takes it) on stdout.", stdout)
	listen := fs.String("listen", "", "TCP `HOST:PORT` for peer sessions (required)")
	udp := fs.String("udp", "", "UDP `HOST:PORT` for STUN (default: the --listen address)")
	state := fs.String("state", "", "`DIR` for the broker's key and registry, kept across restarts (required)")
	metrics := fs.String("metrics", "", "serve Prometheus metrics on `HOST:PORT` (default: none)")
	pprofAddr := fs.String("pprof", "", "serve Go's profiling endpoints (/debug/pprof/) on `HOST:PORT`, for investigations; keep it on loopback (default: none)")
	var peers, bundles cli.Multi
	fs.Var(&peers, "peer-broker", "`HOST:PORT` of another replica to synchronise with (repeatable, or comma-separated)")
	fs.Var(&bundles, "bundle", "cluster bundle `FILE` (NAME.cluster) to serve (repeatable); bundles in DIR/clusters are served too")
	var lim server.Limits
	maxSessions := fs.String("max-sessions", "", "most sessions at once (default 10000)")
	maxClusters := fs.String("max-clusters", "", "most clusters served (default 1000)")
	connRate := fs.String("conn-rate", "", "new connections per second per source address (default 20)")
	enrollRate := fs.String("enroll-rate", "", "enrollment requests per second per source address (default 0.5)")
	queueFrames := fs.String("queue-frames", "", "outbound queue of a session, in frames (default 4096)")
	queueBytes := fs.String("queue-bytes", "", "outbound queue of a session, in bytes (default 16777216)")
	relayRate := fs.String("relay-rate", "", "relayed bytes per second per peer (default 8388608)")
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
	if *metrics != "" {
		if cfg.Metrics, err = parseAddrPort("--metrics", *metrics); err != nil {
			return nil, err
		}
	}
	if *pprofAddr != "" {
		if cfg.Pprof, err = parseAddrPort("--pprof", *pprofAddr); err != nil {
			return nil, err
		}
	}
	for _, f := range bundles {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, cli.Usagef("--bundle %s: %v", f, err)
		}
		if _, err := bundle.Decode(data); err != nil {
			return nil, cli.Usagef("--bundle %s: not a cluster bundle: %v", f, err)
		}
		cfg.Bundles = append(cfg.Bundles, data)
	}
	for _, n := range []struct {
		flag string
		s    string
		p    *int
	}{{"--max-sessions", *maxSessions, &lim.MaxSessions}, {"--max-clusters", *maxClusters, &lim.MaxClusters},
		{"--queue-frames", *queueFrames, &lim.QueueFrames}, {"--queue-bytes", *queueBytes, &lim.QueueBytes}} {
		if n.s == "" {
			continue
		}
		v, err := strconv.Atoi(n.s)
		if err != nil || v < 1 {
			return nil, cli.Usagef("%s %q: want a positive integer", n.flag, n.s)
		}
		*n.p = v
	}
	for _, r := range []struct {
		flag string
		s    string
		p    *float64
	}{{"--conn-rate", *connRate, &lim.ConnRate}, {"--enroll-rate", *enrollRate, &lim.EnrollRate}, {"--relay-rate", *relayRate, &lim.RelayRate}} {
		if r.s == "" {
			continue
		}
		v, err := strconv.ParseFloat(r.s, 64)
		if err != nil || !(v > 0) || v > 1e15 {
			return nil, cli.Usagef("%s %q: want a positive number", r.flag, r.s)
		}
		*r.p = v
	}
	cfg.Limits = lim
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

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseServe(args, stdout)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	_, created, err := server.LoadOrCreateKey(cfg.StateDir)
	if err != nil {
		return err
	}
	sc := server.Config{StateDir: cfg.StateDir, Bundles: cfg.Bundles, Limits: cfg.Limits, Logger: log}
	for _, p := range cfg.PeerBroks {
		sc.PeerBrokers = append(sc.PeerBrokers, p.String())
	}
	srv, err := server.New(sc)
	if err != nil {
		return err
	}
	if created {
		log.Info("created the broker key", "file", cfg.StateDir+"/"+server.KeyFile)
	}
	fmt.Fprintln(stdout, srv.Identity(cfg.Listen.String()))
	if cfg.Pprof.IsValid() {
		stop, err := servePprof(ctx, cfg.Pprof.String())
		if err != nil {
			return err
		}
		defer stop()
	}
	var metrics string
	if cfg.Metrics.IsValid() {
		metrics = cfg.Metrics.String()
	}
	return srv.ListenAndServe(ctx, cfg.Listen.String(), cfg.UDP.String(), metrics)
}
