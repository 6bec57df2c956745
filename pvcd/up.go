package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/internal/version"
	"github.com/pvc-project/pvc/interpose/tun"
	"github.com/pvc-project/pvc/pvcd/daemon"
	"github.com/pvc-project/pvc/security/name"
	"github.com/pvc-project/pvc/security/token"
)

func upVerb() cli.Verb {
	return cli.Verb{Name: "up", Summary: "join this host to its cluster and run the daemon in the foreground", Run: runUp}
}

func parseUp(args []string, stdout, stderr io.Writer) (daemon.Config, error) {
	fs := cli.NewFlagSet("up",
		"pvcd up --cluster NAME [--bundle FILE] [--join TOKEN --name HOST] [--state-dir DIR] [--master-key FILE] [flags]",
		`Runs the peer daemon in the foreground (logs to stderr; SIGTERM, Ctrl-C or
'pvcd down' stop it cleanly and remove its TUN device and name entries).

First start: give the cluster bundle (--bundle NAME.cluster, kept in the state
dir afterwards) and an enrollment token with this host's name (--join TOKEN
--name HOST); the master admits the host through the brokers. The host that
holds the master key runs with --master-key and certifies itself.`, stdout)
	var cfg daemon.Config
	fs.StringVar(&cfg.Cluster, "cluster", "", "the cluster's `NAME` (required)")
	fs.StringVar(&cfg.BundlePath, "bundle", "", "the cluster bundle `FILE` (NAME.cluster); needed on the first start")
	fs.StringVar(&cfg.Join, "join", "", "enrollment `TOKEN` for the first start (from: pvcd token)")
	fs.StringVar(&cfg.Name, "name", "", "this host's peer `NAME` in the cluster (with --join, or for the master's host)")
	fs.StringVar(&cfg.StateDir, "state-dir", defaultStateDir(), "state `DIR`: keys, certificate, bundle copy, control socket (also PVC_STATE_DIR)")
	fs.StringVar(&cfg.MasterKey, "master-key", "", "the cluster's master key `FILE`: also admit hosts and publish the master's objects")
	fs.StringVar(&cfg.Interface, "interface", "pvc0", "TUN interface `NAME`")
	fs.IntVar(&cfg.MTU, "mtu", tun.DefaultMTU, "the TUN device's `MTU`: the default leaves room for WireGuard's 80 bytes\nof overhead on a 1500-byte path; lower it when the path between peers is\nnarrower (PPPoE: 1412, other tunnels)")
	port := fs.Uint("port", 0, "WireGuard UDP `PORT` (0: any)")
	fs.StringVar(&cfg.LocalPolicy, "local-policy", "", "the site's local policy `FILE` (default: allow all)")
	fs.StringVar(&cfg.HostsPath, "hosts-file", "/etc/hosts", "hosts `FILE` that gets the cluster's names while the daemon runs")
	paths := fs.String("paths", "all", "traversal `TECHNIQUES` this host may use, comma-separated: upnp, ice (UDP hole\npunching), tcp (plain TCP to a peer that accepts it), ttcp (Traversing-TCP),\ntcp-punch (TCP simultaneous open); or all, none. Direct UDP and the\nbroker relay are always on")
	verbose := fs.Bool("verbose", false, "log debug messages")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return cfg, err
	}
	if err := noArgs(pos); err != nil {
		return cfg, err
	}
	if cfg.Cluster == "" {
		return cfg, cli.Usagef("--cluster NAME is required")
	}
	if err := name.Check(cfg.Cluster); err != nil {
		return cfg, cli.Usagef("--cluster: %v", err)
	}
	if cfg.Name != "" {
		if err := name.Check(cfg.Name); err != nil {
			return cfg, cli.Usagef("--name: %v", err)
		}
	}
	if cfg.Join != "" {
		if cfg.Name == "" {
			return cfg, cli.Usagef("--join needs --name HOST")
		}
		if _, err := token.Parse(cfg.Join); err != nil {
			return cfg, cli.Usagef("--join: %v", err)
		}
	}
	if cfg.Techniques, err = daemon.ParseTechniques(*paths); err != nil {
		return cfg, cli.Usagef("--paths: %v", err)
	}
	if *port > 65535 {
		return cfg, cli.Usagef("--port %d: want 0 to 65535", *port)
	}
	cfg.ListenPort = uint16(*port)
	if cfg.MTU < tun.MinMTU || cfg.MTU > tun.MaxMTU {
		return cfg, cli.Usagef("--mtu %d: want %d to %d", cfg.MTU, tun.MinMTU, tun.MaxMTU)
	}
	if len(cfg.Interface) == 0 || len(cfg.Interface) > 15 {
		return cfg, cli.Usagef("--interface %q: 1 to 15 characters", cfg.Interface)
	}
	if cfg.StateDir == "" {
		return cfg, cli.Usagef("--state-dir DIR must not be empty")
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.Version = version.String("pvcd")
	return cfg, nil
}

func runUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseUp(args, stdout, stderr)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("pvcd up needs root (CAP_NET_ADMIN) to create its TUN device")
	}
	err = daemon.Run(ctx, cfg)
	switch {
	case errors.Is(err, daemon.ErrNoBundle), errors.Is(err, daemon.ErrNotEnrolled), errors.Is(err, daemon.ErrWrongCluster):
		return cli.Usagef("%v", err)
	case err != nil:
		return fmt.Errorf("up: %w", err)
	}
	return nil
}
