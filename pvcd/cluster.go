package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/master"
	"github.com/pvc-project/pvc/security/name"
)

func clusterVerb() cli.Verb {
	return cli.Verb{Name: "cluster", Summary: "create a cluster (master key, bundle): cluster init", Run: runCluster}
}

func runCluster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runSub(ctx, "cluster", []cli.Verb{
		{Name: "init", Summary: "create a cluster: master key, NAME.cluster bundle, master state", Run: runClusterInit},
	}, args, stdout, stderr)
}

func runClusterInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet("cluster init",
		"pvcd cluster init NAME --broker HOST:PORT[=PUBKEY]... [--subnet 240.A.0.0/16] [--domain D] --out DIR",
		`Creates the cluster NAME in DIR: the master key DIR/NAME.key (0600; keep it
secret), the public bundle DIR/NAME.cluster (give it to every host) and the
master's state DIR/NAME.state. Without --subnet a random /16 of 240.0.0.0/4 is
chosen that overlaps no other cluster bundle in DIR or given with --avoid.`, stdout)
	var brokers, avoid cli.Multi
	fs.Var(&brokers, "broker", "broker `HOST:PORT`, optionally =PUBKEY to pin its key (repeatable or comma-separated; at least one)")
	subnet := fs.String("subnet", "", "the cluster's `PREFIX` inside 240.0.0.0/4, /8 to /24 (default: a random free /16)")
	domain := fs.String("domain", "", "DNS `DOMAIN` of the peers' names (default NAME.pvc)")
	out := fs.String("out", "", "`DIR` to write the cluster's files to (required)")
	fs.Var(&avoid, "avoid", "other cluster bundle `FILE` whose subnet must not overlap (repeatable)")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return cli.Usagef("cluster init needs exactly one NAME (got %d arguments)", len(pos))
	}
	cluster := pos[0]
	if err := name.Check(cluster); err != nil {
		return cli.Usagef("cluster name: %v", err)
	}
	if *out == "" {
		return cli.Usagef("--out DIR is required")
	}
	if len(brokers) == 0 {
		return cli.Usagef("at least one --broker HOST:PORT is required")
	}
	opts := master.InitOptions{Domain: *domain}
	for _, s := range brokers {
		b, err := bundle.ParseBroker(s)
		if err != nil {
			return cli.Usagef("--broker: %v", err)
		}
		opts.Brokers = append(opts.Brokers, b)
	}
	if *subnet != "" {
		p, err := netip.ParsePrefix(*subnet)
		if err != nil {
			return cli.Usagef("--subnet %q: want a prefix such as 240.7.0.0/16", *subnet)
		}
		if err := bundle.CheckSubnet(p); err != nil {
			return cli.Usagef("--subnet: %v", err)
		}
		opts.Subnet = p
	}
	if *domain != "" {
		if err := bundle.CheckDomain(*domain); err != nil {
			return cli.Usagef("--domain: %v", err)
		}
	}
	taken, err := otherSubnets(*out, avoid)
	if err != nil {
		return err
	}
	for _, t := range taken {
		if opts.Subnet.IsValid() && t.Overlaps(opts.Subnet) {
			return cli.Usagef("--subnet %v overlaps %v of another cluster", opts.Subnet, t)
		}
	}
	opts.Taken = taken
	m, err := master.Init(*out, cluster, opts)
	if err != nil {
		return err
	}
	b := m.Bundle()
	pinned := 0
	for _, br := range b.Brokers {
		if br.Key != nil {
			pinned++
		}
	}
	fmt.Fprintf(stdout, "created cluster %s: subnet %v, domain %s, %d broker(s), %d pinned\n", cluster, b.Subnet, b.Domain, len(b.Brokers), pinned)
	fmt.Fprintf(stdout, "master key %s (keep it secret), bundle %s (give it to every host)\n",
		master.KeyPath(*out, cluster), master.BundlePath(*out, cluster))
	return nil
}

// otherSubnets returns the subnets of the cluster bundles in dir and in
// the --avoid files.
func otherSubnets(dir string, avoid []string) ([]netip.Prefix, error) {
	var taken []netip.Prefix
	files, _ := filepath.Glob(filepath.Join(dir, "*"+bundle.FileExt))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if b, err := bundle.Decode(data); err == nil {
			taken = append(taken, b.Subnet)
		}
	}
	for _, f := range avoid {
		data, err := readInput("--avoid", f)
		if err != nil {
			return nil, err
		}
		b, err := bundle.Decode(data)
		if err != nil {
			return nil, cli.Usagef("--avoid %s: %v", f, err)
		}
		taken = append(taken, b.Subnet)
	}
	return taken, nil
}
