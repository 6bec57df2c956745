package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/pvcd/control"
)

// DefaultStateDir is where pvcd keeps its state unless --state-dir or
// PVC_STATE_DIR says otherwise.
const DefaultStateDir = "/var/lib/pvc"

func defaultStateDir() string {
	if d := os.Getenv("PVC_STATE_DIR"); d != "" {
		return d
	}
	return DefaultStateDir
}

// ctlFlags parses the flags every control verb shares.
func ctlFlags(verb, usage, desc string, args []string, stdout io.Writer, withJSON bool, npos int) (dir string, asJSON bool, pos []string, err error) {
	fs := cli.NewFlagSet("pvcd "+verb, usage, desc, stdout)
	fs.StringVar(&dir, "state-dir", defaultStateDir(), "the daemon's state `DIR` (also PVC_STATE_DIR)")
	if withJSON {
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	}
	pos, err = cli.Parse(fs, args)
	if err != nil {
		return "", false, nil, err
	}
	if len(pos) != npos {
		if npos == 0 {
			return "", false, nil, cli.Usagef("unexpected argument %q", pos[0])
		}
		return "", false, nil, cli.Usagef("usage: %s", usage)
	}
	return dir, asJSON, pos, nil
}

func statusVerb() cli.Verb {
	return cli.Verb{Name: "status", Summary: "show the running daemon's state", Run: func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		dir, asJSON, _, err := ctlFlags("status", "pvcd status [--json] [--state-dir DIR]", "Shows the running daemon's cluster, address, brokers and peer counts.", args, stdout, true, 0)
		if err != nil {
			return err
		}
		st, err := control.NewClient(dir).Status(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(stdout, st)
		}
		fmt.Fprintf(stdout, "%s.%s  %s on %s (subnet %s, MTU %d), port %d, up %v, %d peers known, %d active\n",
			st.Name, st.Cluster, st.VirtualIP, st.Interface, st.Subnet, st.MTU, st.Port, time.Since(st.Since).Round(time.Second), st.Peers, st.Active)
		if st.Oversize > 0 {
			fmt.Fprintf(stdout, "  %d batches of datagrams were too large for their path and went out fragmented (the routes to those peers are clamped since; pvcd up --mtu lowers the MTU for all)\n", st.Oversize)
		}
		for _, b := range st.Brokers {
			state := "connected"
			if !b.Connected {
				state = "not connected: " + b.Error
			}
			fmt.Fprintf(stdout, "  broker %s: %s", b.Addr, state)
			if b.Observed != "" {
				fmt.Fprintf(stdout, " (sees us as %s)", b.Observed)
			}
			fmt.Fprintln(stdout)
		}
		return nil
	}}
}

func peersVerb() cli.Verb {
	return cli.Verb{Name: "peers", Summary: "list the peers and the path to each", Run: func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		dir, asJSON, _, err := ctlFlags("peers", "pvcd peers [--json] [--state-dir DIR]", "Lists the cluster's peers: virtual IP, path kind (direct, upnp, punched, ttcp,\ntcp-punch, relay), remote endpoint, last handshake, bytes in and out.", args, stdout, true, 0)
		if err != nil {
			return err
		}
		peers, err := control.NewClient(dir).Peers(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(stdout, peers)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tVIRTUAL IP\tPATH\tREMOTE\tHANDSHAKE\tIN\tOUT")
		var why []string
		for _, p := range peers {
			hs := "never"
			if !p.LastHandshake.IsZero() {
				hs = time.Since(p.LastHandshake).Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", p.Name, p.VirtualIP, p.Path, p.Remote, hs, p.BytesIn, p.BytesOut)
			if p.Why != "" {
				why = append(why, fmt.Sprintf("%s: %s", p.Name, p.Why))
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(why) > 0 {
			fmt.Fprintln(stdout, "\nwhy not better:")
			for _, w := range why {
				fmt.Fprintln(stdout, "  "+w)
			}
		}
		return nil
	}}
}

func pingVerb() cli.Verb {
	return cli.Verb{Name: "ping", Summary: "ping a peer over the overlay and say which path it took", Run: func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		dir, _, pos, err := ctlFlags("ping", "pvcd ping PEER [--state-dir DIR]", "Sends an echo to PEER over the overlay; prints the round trip and the path.", args, stdout, false, 1)
		if err != nil {
			return err
		}
		r, err := control.NewClient(dir).Ping(ctx, pos[0])
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s (%s) via %s: %.2f ms\n", r.Peer, r.IP, r.Path, float64(r.RTT)/1e6)
		return nil
	}}
}

func downVerb() cli.Verb {
	return cli.Verb{Name: "down", Summary: "stop the running daemon (removes its TUN, DNS entries, mappings)", Run: func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		dir, _, _, err := ctlFlags("down", "pvcd down [--state-dir DIR]", "Asks the running daemon to shut down cleanly.", args, stdout, false, 0)
		if err != nil {
			return err
		}
		if err := control.NewClient(dir).Down(ctx); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "pvcd (state dir %s) is shutting down\n", dir)
		return nil
	}}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
