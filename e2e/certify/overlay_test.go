package certify

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
)

// overlaySites places the Slurm controller and each slurmd node in a site
// of its own, one of every NATed or firewalled kind of LAB.md. n2 and n5
// are the saboteurs.
var overlaySites = []struct {
	node string
	kind netlab.Kind
}{
	{"ctl", netlab.Cone},
	{"n1", netlab.UPnP},
	{"n2", netlab.Symmetric},
	{"n3", netlab.Firewall},
	{"n4", netlab.DoubleNAT},
	{"n5", netlab.UDPBlocked},
	{"n6", netlab.HostFW},
}

// slurmPort is slurmd's port (Slurm's default SlurmdPort).
const slurmPort = 6818

// TestSlurmBLASTOverOverlay is TestSlurmBLASTSaboteurs on a PVC virtual
// cluster: a broker on the Internet, the master's pvcd at a public site,
// and slurmctld's host and six slurmd hosts each in a site of its own
// behind a different NAT or firewall, every one running pvcd enrolled
// with a token through the broker. Slurm knows only the overlay's 240.x
// addresses (SlurmctldHost and every NodeAddr). Besides the certification
// checks it checks that Slurm's traffic crossed the overlay: from the
// controller's host no slurmd is reachable at its own address while every
// one is at its 240.x address, and the controller's pvcd carried Slurm's
// bytes to and from every node.
func TestSlurmBLASTOverOverlay(t *testing.T) {
	netlab.RequireRoot(t)
	netlab.RequireTools(t, "munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel",
		"makeblastdb", "blastn", "nsenter", "unshare", "awk")
	begin := time.Now()
	// The binaries build while the lab is made.
	type built struct {
		dir string
		err error
	}
	bins := make(chan built, 1)
	go func() {
		d, err := vcluster.BuildBinaries()
		bins <- built{d, err}
	}()
	binDir := func() string {
		b := <-bins
		bins <- b
		if b.err != nil {
			t.Fatal(b.err)
		}
		return b.dir
	}
	t.Cleanup(func() {
		if b := <-bins; b.dir != "" {
			os.RemoveAll(b.dir)
		}
	})

	spec := netlab.Spec{Internet: []string{"b1"}, Sites: []netlab.SiteSpec{{Name: "mast", Kind: netlab.Public}}}
	for _, s := range overlaySites {
		spec.Sites = append(spec.Sites, netlab.SiteSpec{Name: s.node, Kind: s.kind})
	}
	lab := netlab.New(t, spec)
	r := newBLASTRun(t, 18, 3, []string{"n2", "n5"})

	c := vcluster.New(lab, "grid", binDir(), filepath.Join(r.dir, "cluster"))
	must(t, os.MkdirAll(c.Dir, 0o755))
	must(t, c.StartBroker(lab.Internet("b1")))
	must(t, c.Init())
	tok, err := c.Token(len(overlaySites))
	must(t, err)
	// pvcd is ended by PID before the files it uses are removed.
	t.Cleanup(func() {
		for _, n := range c.Nodes {
			_ = n.Proc.Stop(3 * time.Second)
		}
	})
	if _, err := c.Up(lab.Site("mast").Hosts[0], "master", "--master-key", c.MasterKey()); err != nil {
		t.Fatal(err)
	}
	for _, s := range overlaySites {
		if _, err := c.Up(lab.Site(s.node).Hosts[0], s.node, "--join", tok); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := c.WaitPeers(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("lab, broker and %d pvcd up, every peer knows every other, in %v", len(c.Nodes), time.Since(begin).Round(time.Millisecond))

	ctl := c.Nodes["ctl"]
	sp := slurmSpec{Ctl: ctl.Host, CtlAddr: ctl.Status.VirtualIP, Nodes: map[string]*netlab.Host{},
		Addrs: map[string]netip.Addr{}, Binds: r.binds}
	for _, s := range overlaySites[1:] {
		n := c.Nodes[s.node]
		sp.Names = append(sp.Names, s.node)
		sp.Nodes[s.node] = n.Host
		sp.Addrs[s.node] = n.Status.VirtualIP
		if !netip.MustParsePrefix("240.0.0.0/4").Contains(n.Status.VirtualIP) {
			t.Fatalf("%s's virtual IP %s is not in 240.0.0.0/4", s.node, n.Status.VirtualIP)
		}
	}
	before := peerBytes(t, ctl)
	pool := startSlurm(t, filepath.Join(r.dir, "slurm"), sp)
	conf, err := os.ReadFile(pool.conf)
	must(t, err)
	t.Logf("Slurm pool (%d slurmd) idle after %v; slurm.conf addresses:\n%s", len(sp.Names),
		time.Since(begin).Round(time.Millisecond), grep(string(conf), "SlurmctldHost", "NodeName"))

	// The controller's host reaches every slurmd at its 240.x address and
	// none at its own: Slurm cannot have gone around the overlay.
	checkReach(t, ctl.Host, sp)

	rep := r.certify(t, pool)

	// The controller's pvcd carried Slurm's traffic to every node: the
	// RPCs of registration, pings and job launches, and the nodes' job
	// completions. The master, which runs no Slurm daemon, is the
	// reference for what pvcd exchanges by itself over the same time.
	after := peerBytes(t, ctl)
	var rows []string
	ref := after["master"].sub(before["master"])
	for _, n := range sp.Names {
		d := after[n].sub(before[n])
		rows = append(rows, fmt.Sprintf("%s (%s, path %s): %d bytes in, %d out (before Slurm started: %d, %d)",
			n, kindOf(n), after[n].path, d.in, d.out, before[n].in, before[n].out))
		if d.in < minSlurmBytes || d.out < minSlurmBytes || d.in < 4*ref.in || d.out < 4*ref.out {
			t.Errorf("ctl's pvcd carried %d bytes from %s and %d to it during the run (master, no Slurm: %d and %d); want at least %d each way and 4 times the master's",
				d.in, n, d.out, ref.in, ref.out, minSlurmBytes)
		}
	}
	t.Logf("bytes through ctl's pvcd during Slurm's run, by peer (master, no Slurm: %d in, %d out):\n  %s",
		ref.in, ref.out, strings.Join(rows, "\n  "))
	var kinds []string
	for _, s := range overlaySites {
		kinds = append(kinds, s.node+"="+string(s.kind))
	}
	t.Logf("BLAST on Slurm over the overlay (%s): %d jobs accepted, %d tasks run (%d replicas for jobs, %.2f per accepted result, %d re-runs, %d spot-checks of which %d failed), saboteurs %v blacklisted, %.1f s certifying; second run %d tasks in %.1f s; %v in all",
		strings.Join(kinds, " "), rep.Accepted, rep.TasksRun, rep.ReplicaTasks, rep.ReplicasPerAccepted, rep.Rerun, rep.Checks, rep.ChecksFailed,
		rep.Blacklisted, rep.ElapsedSeconds, rep.Second.TasksRun, rep.Second.ElapsedSeconds, time.Since(begin).Round(time.Millisecond))
	pool.stop(t)
}

// minSlurmBytes is the least Slurm traffic between the controller and a
// node over a certification run, each way: a node that ran no job still
// registered and answered pings.
const minSlurmBytes = 4 << 10

func kindOf(node string) netlab.Kind {
	for _, s := range overlaySites {
		if s.node == node {
			return s.kind
		}
	}
	return ""
}

type traffic struct {
	in, out uint64
	path    string
}

func (a traffic) sub(b traffic) traffic {
	return traffic{in: a.in - b.in, out: a.out - b.out, path: a.path}
}

// peerBytes returns what n's pvcd has exchanged with each peer.
func peerBytes(t *testing.T, n *vcluster.Node) map[string]traffic {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ps, err := n.Peers(ctx)
	must(t, err)
	m := map[string]traffic{}
	for _, p := range ps {
		m[p.Name] = traffic{in: p.BytesIn, out: p.BytesOut, path: p.Path}
	}
	return m
}

// checkReach connects from the controller's host to every slurmd: at its
// overlay address the connection must be accepted, at its own (underlay)
// address it must not.
func checkReach(t *testing.T, from *netlab.Host, sp slurmSpec) {
	t.Helper()
	dial := func(a netip.Addr, timeout time.Duration) error {
		return from.Do(func() error {
			c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(a, slurmPort).String(), timeout)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var rows []string
	for _, n := range sp.Names {
		wg.Go(func() {
			over := dial(sp.Addrs[n], 5*time.Second)
			under := dial(sp.Nodes[n].Addr, 2*time.Second)
			mu.Lock()
			defer mu.Unlock()
			if over != nil {
				t.Errorf("slurmd %s at its overlay address %s: %v", n, sp.Addrs[n], over)
			}
			if under == nil {
				t.Errorf("slurmd %s is reachable from the controller's site at its own address %s: Slurm's traffic need not cross the overlay", n, sp.Nodes[n].Addr)
			}
			rows = append(rows, fmt.Sprintf("%s: %s:%d accepted, %s:%d %v", n, sp.Addrs[n], slurmPort, sp.Nodes[n].Addr, slurmPort, under))
		})
	}
	wg.Wait()
	t.Logf("from the controller's host:\n  %s", strings.Join(rows, "\n  "))
}

// grep returns the lines of s that start with one of the prefixes.
func grep(s string, prefixes ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
