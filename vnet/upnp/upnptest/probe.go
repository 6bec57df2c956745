package upnptest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/pvc-project/pvc/vnet/upnp"
)

// Probe is the program the lab tests start inside a lab host (goupnp opens
// its sockets from goroutines of its own, so the Mapper must run in a
// process that lives in the host's network namespace). It runs a Mapper
// for one port until ctx ends and writes one line per status change to
// stdout:
//
//	mapped 203.0.113.100:7400 internal=198.18.1.2:7400 lease=4s discovery=52ms setup=9ms
//	failed why="no UPnP gateway found" discovery=3s
//	disabled why="UPnP forbidden by local policy"
//	stopped
//
// Logs go to stderr. args are the flags (see -h).
func Probe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pvc-upnp-probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg     upnp.Config
		port    = fs.Uint("port", 0, "internal UDP port to map (required)")
		verbose = fs.Bool("v", false, "debug logs")
	)
	fs.StringVar(&cfg.Cluster, "cluster", "lab", "cluster name (for the description)")
	fs.StringVar(&cfg.Peer, "peer", "probe", "peer name (for the description)")
	fs.StringVar(&cfg.RootURL, "root-url", "", "gateway root-description URL (skips the SSDP search)")
	fs.DurationVar(&cfg.Lease, "lease", 0, "lease to ask for (0: the default, 1h)")
	fs.DurationVar(&cfg.DiscoverTimeout, "discover-timeout", 0, "bound on discovery (0: 5s)")
	fs.DurationVar(&cfg.RetryMin, "retry", 0, "first retry delay after a failure (0: 10s)")
	fs.BoolVar(&cfg.Disabled, "disable", false, "local policy forbids UPnP")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *port == 0 || *port > 65535 {
		return errors.New("-port: want 1-65535")
	}
	cfg.Port = uint16(*port)
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.OnStatus = func(s upnp.Status) {
		switch s.State {
		case upnp.StateMapped:
			fmt.Fprintf(stdout, "mapped %v internal=%v lease=%v discovery=%v setup=%v\n",
				s.External, s.Internal, s.Lease, ms(s.Discovery), ms(s.Setup))
		case upnp.StateFailed:
			fmt.Fprintf(stdout, "failed why=%q discovery=%v err=%q\n", s.Why(), ms(s.Discovery), s.Err)
		case upnp.StateDisabled, upnp.StateStopped:
			fmt.Fprintf(stdout, "%v why=%q\n", s.State, s.Why())
		}
	}
	m := upnp.New(cfg)
	fmt.Fprintf(stdout, "description %q\n", m.Description())
	err := m.Run(ctx)
	if errors.Is(err, upnp.ErrDisabled) {
		return nil
	}
	return err
}

func ms(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
