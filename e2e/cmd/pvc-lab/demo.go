package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
	"github.com/pvc-project/pvc/internal/cli"
)

// runDemo is the main job: a virtual cluster across NATed sites on this
// machine, shown and torn down.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet("pvc-lab demo", "pvc-lab demo [--bin DIR] [--keep]",
		`Builds a lab (a broker on the Internet; the master at a public site; peers at cone,
firewall and symmetric NAT sites), brings the virtual cluster up with the real
pvc-broker and pvcd, shows the peers and their paths, pings by name, resolves with
dig, runs NetPIPE between the two NATed peers, prints a summary and tears
everything down (also on Ctrl-C).`, stdout)
	binDir := fs.String("bin", "", "`DIR` holding pvcd and pvc-broker (default: beside pvc-lab)")
	keep := fs.Bool("keep", false, "keep the cluster up after the summary until Ctrl-C")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return cli.Usagef("unexpected argument %q", pos[0])
	}
	if *binDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		*binDir = filepath.Dir(exe)
	}
	for _, b := range []string{"pvcd", "pvc-broker"} {
		if _, err := os.Stat(filepath.Join(*binDir, b)); err != nil {
			return cli.Usagef("%s not found in %s: run `make build` first, or give --bin DIR", b, *binDir)
		}
	}
	if err := needRoot(); err != nil {
		return err
	}
	for _, tool := range []string{"ping", "dig", "NPtcp"} {
		if _, err := lookTool(tool); err != nil {
			return fmt.Errorf("the demo needs %s: run scripts/install-deps.sh as root", tool)
		}
	}
	say := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	t0 := time.Now()
	spec := netlab.Spec{Internet: []string{"b1"}, Sites: []netlab.SiteSpec{
		{Name: "mast", Kind: netlab.Public},
		{Name: "cone", Kind: netlab.Cone},
		{Name: "fw", Kind: netlab.Firewall},
		{Name: "sym", Kind: netlab.Symmetric},
		{Name: "ub", Kind: netlab.UDPBlocked},
	}}
	l, err := build(ctx, spec, io.Discard)
	if err != nil {
		return err
	}
	defer func() {
		start := time.Now()
		if err := l.Close(); err != nil {
			fmt.Fprintf(stderr, "teardown: %v\n", err)
			return
		}
		say("\ntorn down in %v: processes, TUN devices, namespaces, files", time.Since(start).Round(time.Millisecond))
	}()
	say("== lab %s: a broker on the Internet, sites: master (public), cone1 (cone NAT), fw1 (firewall), sym1 (symmetric NAT), ub1 (NAT that blocks UDP)", l.ID)
	dir, err := os.MkdirTemp("", "pvc-demo")
	if err != nil {
		return err
	}
	c := vcluster.New(l, "demo", *binDir, dir)
	defer func() {
		c.StopAll(5 * time.Second) // before their files go (the lab's teardown comes after)
		os.RemoveAll(dir)
	}()
	if err := c.StartBroker(l.Internet("b1")); err != nil {
		return err
	}
	say("pvc-broker on b1: %s", c.Brokers[0])
	if err := c.Init(); err != nil {
		return err
	}
	tok, err := c.Token(4)
	if err != nil {
		return err
	}
	say("pvcd cluster init demo: master key and bundle; pvcd token: %s...", tok[:24])
	start := time.Now()
	if _, err := c.Up(l.Site("mast").Hosts[0], "master", "--master-key", c.MasterKey()); err != nil {
		return err
	}
	nodes := map[string]*vcluster.Node{}
	for _, s := range []struct{ site, name string }{{"cone", "cone1"}, {"fw", "fw1"}, {"sym", "sym1"}, {"ub", "ub1"}} {
		n, err := c.Up(l.Site(s.site).Hosts[0], s.name, "--join", tok)
		if err != nil {
			return err
		}
		nodes[s.name] = n
		say("pvcd up %-6s at %-9s enrolled through the broker: %s", s.name, l.Site(s.site).Kind(), n.Status.VirtualIP)
	}
	if err := c.WaitPeers(ctx, 30*time.Second); err != nil {
		return err
	}
	say("every peer knows every other %v after the first pvcd started", time.Since(start).Round(time.Millisecond))
	if ctx.Err() != nil {
		return ctx.Err()
	}

	say("\n== ping by name (pvcd's DNS, then the overlay)")
	cone, sym := nodes["cone1"], nodes["sym1"]
	for _, to := range []string{"master", "fw1", "sym1", "ub1"} {
		out, err := cone.Host.Run(ctx, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "5", to+".demo.pvc")
		say("cone1 -> %-16s %s", to+".demo.pvc", lastLines(out, err, 2))
	}
	say("\n== dig against sym1's pvcd")
	out, err := sym.Host.Run(ctx, "dig", "+short", "@"+sym.Status.VirtualIP.String(), "fw1.demo.pvc")
	say("dig fw1.demo.pvc A      -> %s", lastLines(out, err, 1))
	out, err = sym.Host.Run(ctx, "dig", "+short", "@"+sym.Status.VirtualIP.String(), "-x", cone.Status.VirtualIP.String())
	say("dig -x %-15s -> %s", cone.Status.VirtualIP, lastLines(out, err, 1))

	say("\n== NetPIPE (NPtcp) between the two NATed peers, cone1 -> sym1, over the overlay")
	recv, err := sym.Host.Start("NPtcp")
	if err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	npOut := filepath.Join(dir, "np.out")
	npCtx, npCancel := context.WithTimeout(ctx, 60*time.Second)
	// (NetPIPE 3.7.2's -p 0 stalls at 16 bytes here: keep its defaults.)
	_, err = cone.Host.Run(npCtx, "NPtcp", "-h", sym.Status.VirtualIP.String(), "-u", "262144", "-o", npOut)
	npCancel()
	_ = recv.Stop(time.Second)
	if err != nil {
		say("NPtcp failed: %v", err)
	} else {
		rows, _ := os.ReadFile(npOut)
		say("%8s %10s %12s", "bytes", "Mbit/s", "one-way us")
		for _, line := range pick(strings.Split(strings.TrimSpace(string(rows)), "\n"), 6) {
			var size, mbps, secs float64
			if _, err := fmt.Sscan(line, &size, &mbps, &secs); err == nil {
				say("%8.0f %10.1f %12.1f", size, mbps, secs*1e6)
			}
		}
	}

	say("\n== pvcd peers on cone1 (the real command in cone1's namespace)")
	out, err = cone.Host.Run(ctx, filepath.Join(*binDir, "pvcd"), "peers", "--state-dir", cone.State)
	say("%s", strings.TrimRight(lastLines(out, err, 20), "\n"))

	say("\n== summary")
	say("5 hosts in 5 administrative domains (public, cone NAT, firewall, symmetric NAT, UDP-blocking NAT) form")
	say("one virtual IP cluster in %s; names, paths and throughput above; %v from an empty machine to here.", c.Nodes["master"].Status.Subnet, time.Since(t0).Round(time.Millisecond))
	if *keep {
		say("\nthe cluster stays up until Ctrl-C; enter a host with: ip netns exec %s bash", cone.Host.NS)
		<-ctx.Done()
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		say("interrupted")
	}
	return nil
}

// lastLines returns the last n lines of a command's output, or its error.
func lastLines(out string, err error, n int) string {
	if err != nil {
		return "FAILED: " + err.Error()
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// pick returns about n lines spread over rows, always with the last.
func pick(rows []string, n int) []string {
	if len(rows) <= n {
		return rows
	}
	var out []string
	step := len(rows) / (n - 1)
	for i := 0; i < len(rows)-1 && len(out) < n-1; i += step {
		out = append(out, rows[i])
	}
	return append(out, rows[len(rows)-1])
}

func lookTool(name string) (string, error) {
	for _, d := range []string{"/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", os.ErrNotExist
}
