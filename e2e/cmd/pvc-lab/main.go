// Command pvc-lab builds PVC's network lab (see package netlab) for a
// person to look around in: `up` builds a lab and waits, `tour` builds one
// with a site of every kind, measures what each site does to real traffic,
// compares it with the expected table and tears it down, `sweep` removes
// leftovers of lab runs whose process died. It needs root.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/internal/version"
)

func program() *cli.Program {
	return &cli.Program{
		Name: "pvc-lab",
		Summary: `pvc-lab: PVC's network lab on this machine (root needed).

An "Internet" (203.0.113.0/24) and sites behind real kernel NATs and
firewalls (198.18.N.0/24), made of network namespaces named pvcID-*.`,
		Version: version.String("pvc-lab"),
		Verbs: []cli.Verb{
			{Name: "up", Summary: "build a lab, print how to enter its hosts, wait for Ctrl-C, tear it down", Run: runUp},
			{Name: "tour", Summary: "build a site of every kind, measure each with real traffic, tear down", Run: runTour},
			{Name: "sweep", Summary: "remove leftovers of lab runs whose process died", Run: runSweep},
			{Name: "demo", Summary: "a virtual cluster across NATed sites with the real pvc-broker and pvcd, shown and torn down", Run: runDemo},
		},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := program().Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// specFlags are the flags that describe a lab.
type specFlags struct {
	kinds, internet string
	hosts           int
	delay           time.Duration
	loss            float64
	rate            string
}

func (f *specFlags) spec() (netlab.Spec, error) {
	var spec netlab.Spec
	for _, n := range strings.Split(f.internet, ",") {
		if n = strings.TrimSpace(n); n != "" {
			spec.Internet = append(spec.Internet, n)
		}
	}
	var rate uint64
	if f.rate != "" {
		r, err := netlab.ParseRate(f.rate)
		if err != nil {
			return spec, cli.Usagef("--rate: %v", err)
		}
		rate = r
	}
	for _, k := range strings.Split(f.kinds, ",") {
		kind, err := netlab.ParseKind(strings.TrimSpace(k))
		if err != nil {
			return spec, cli.Usagef("--kinds: %v", err)
		}
		spec.Sites = append(spec.Sites, netlab.SiteSpec{
			Name:  strings.ReplaceAll(string(kind), "-", ""),
			Kind:  kind,
			Hosts: f.hosts,
			Shape: netlab.Shape{Delay: f.delay, Loss: f.loss, Rate: rate},
		})
	}
	if err := spec.Validate(); err != nil {
		return spec, cli.Usagef("%v", err)
	}
	return spec, nil
}

func allKinds() string {
	var s []string
	for _, k := range netlab.Kinds {
		s = append(s, string(k))
	}
	return strings.Join(s, ",")
}

func parseSpecFlags(verb, usage, desc string, args []string, stdout io.Writer) (netlab.Spec, error) {
	fs := cli.NewFlagSet("pvc-lab "+verb, usage, desc, stdout)
	var f specFlags
	fs.StringVar(&f.kinds, "kinds", allKinds(), "comma-separated site `KINDS`, one site each (public, hostfw, firewall, cone, symmetric, udp-blocked, upnp, double-nat)")
	fs.StringVar(&f.internet, "internet", "b1,b2", "comma-separated `NAMES` of hosts on the Internet (brokers, servers): 203.0.113.10 and up")
	fs.IntVar(&f.hosts, "hosts", 1, "hosts per site")
	fs.DurationVar(&f.delay, "delay", 0, "one-way `DELAY` added in each direction of every site's WAN link (e.g. 10ms)")
	fs.Float64Var(&f.loss, "loss", 0, "`FRACTION` of packets lost in each direction of every site's WAN link (e.g. 0.01)")
	fs.StringVar(&f.rate, "rate", "", "`RATE` limit of every site's WAN link in each direction (e.g. 100mbit, 1gbit)")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return netlab.Spec{}, err
	}
	if len(pos) > 0 {
		return netlab.Spec{}, cli.Usagef("unexpected argument %q", pos[0])
	}
	if f.hosts < 1 {
		return netlab.Spec{}, cli.Usagef("--hosts %d: want at least 1", f.hosts)
	}
	return f.spec()
}

func needRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (network namespaces, iptables): run it with sudo or as root")
	}
	return nil
}

func build(ctx context.Context, spec netlab.Spec, stderr io.Writer) (*netlab.Lab, error) {
	if err := needRoot(); err != nil {
		return nil, err
	}
	return netlab.Build(ctx, spec, netlab.Options{Logf: func(f string, a ...any) { fmt.Fprintf(stderr, f+"\n", a...) }})
}

func runUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	spec, err := parseSpecFlags("up", "pvc-lab up [--kinds K,...] [--internet N,...] [--hosts N] [--delay D] [--loss F] [--rate R]",
		"Builds a lab and waits until Ctrl-C or SIGTERM, then tears it down.", args, stdout)
	if err != nil {
		return err
	}
	l, err := build(ctx, spec, stderr)
	if err != nil {
		return err
	}
	l.Describe(stdout)
	fmt.Fprintln(stdout, "The lab stays up until Ctrl-C.")
	<-ctx.Done()
	fmt.Fprintln(stdout, "tearing down...")
	return l.Close()
}

func runTour(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	spec, err := parseSpecFlags("tour", "pvc-lab tour [--kinds K,...] [--delay D] [--loss F] [--rate R]",
		"Builds a lab with a site of every kind, measures each site with real traffic from two\nInternet hosts, compares with the expected behaviour of its kind, and tears down.", args, stdout)
	if err != nil {
		return err
	}
	if len(spec.Internet) < 2 {
		return cli.Usagef("--internet: the tour needs two Internet hosts")
	}
	start := time.Now()
	l, err := build(ctx, spec, stderr)
	if err != nil {
		return err
	}
	built := time.Since(start)
	defer l.Close()
	l.Describe(stdout)
	p, err := netlab.NewProber(l.Internet(spec.Internet[0]), l.Internet(spec.Internet[1]))
	if err != nil {
		return err
	}
	defer p.Close()
	got, err := p.ProbeAll(l.Sites())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nWhat each site does to real traffic (from %s and %s):\n", spec.Internet[0], spec.Internet[1])
	fmt.Fprintf(stdout, "  %-12s %-12s %s  as expected\n", "site", "kind", netlab.BehaviourHeader)
	bad := 0
	for i, s := range l.Sites() {
		verdict := "yes"
		if d := got[i].Diff(netlab.Expected(s)); d != "" {
			verdict, bad = "NO: "+d, bad+1
		}
		fmt.Fprintf(stdout, "  %-12s %-12s %s  %s\n", s.Name(), s.Kind(), got[i].Row(), verdict)
	}
	for _, s := range l.Sites() {
		if s.Kind() != netlab.UPnP {
			continue
		}
		r, err := netlab.ProbeUPnP(ctx, s, l.Internet(spec.Internet[0]), 700*time.Millisecond)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "\nUPnP at site %s (miniupnpd on its router, upnpc on its host): mapped %v, datagram arrived through %v: %v, closed after removal: %v\n",
			s.Name(), r.Mapped, r.ExternalAddr, r.Arrived, r.ClosedAfter)
		if !r.Mapped || !r.Arrived || !r.ClosedAfter {
			bad++
		}
	}
	closeStart := time.Now()
	if err := l.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nlab built in %v, torn down in %v; %d namespaces, nothing left behind\n",
		built.Round(time.Millisecond), time.Since(closeStart).Round(time.Millisecond), len(l.Namespaces()))
	if bad > 0 {
		return fmt.Errorf("%d sites did not behave as their kind should", bad)
	}
	fmt.Fprintln(stdout, "every site behaved as its kind should")
	return nil
}

func runSweep(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet("pvc-lab sweep", "pvc-lab sweep", "Removes the namespaces, processes and files of lab runs whose process died.\nLive runs and pvc* namespaces that no run claims are left alone.", stdout)
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return cli.Usagef("unexpected argument %q", pos[0])
	}
	if err := needRoot(); err != nil {
		return err
	}
	rep, err := netlab.Sweep()
	fmt.Fprintf(stdout, "removed %d dead runs %v; left %d live runs %v", len(rep.Removed), rep.Removed, len(rep.Live), rep.Live)
	if len(rep.Unknown) > 0 {
		fmt.Fprintf(stdout, "; not ours, left alone: %v", rep.Unknown)
	}
	fmt.Fprintln(stdout)
	return err
}
