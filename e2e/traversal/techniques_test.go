package traversal

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
)

// startPair builds a lab with a broker, the master at a public site and
// two sites of the given kinds with one host each, and brings up pvcd
// "p1" and "p2" on them (wrap: commands p2 runs under).
func startPair(t *testing.T, k1, k2 netlab.Kind, wrap2 []string, extra ...string) (c *vcluster.Cluster, p1, p2 *vcluster.Node) {
	t.Helper()
	l := netlab.New(t, netlab.Spec{Internet: []string{"b1"}, Sites: []netlab.SiteSpec{
		{Name: "mast", Kind: netlab.Public}, {Name: "s1", Kind: k1}, {Name: "s2", Kind: k2}}})
	c = vcluster.NewT(t, l, "lab", bin)
	if err := c.StartBroker(l.Internet("b1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Init(); err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Up(l.Site("mast").Hosts[0], "master", "--master-key", c.MasterKey()); err != nil {
		t.Fatal(err)
	}
	if p1, err = c.Up(l.Site("s1").Hosts[0], "p1", append([]string{"--join", tok}, extra...)...); err != nil {
		t.Fatal(err)
	}
	c.Wrap = map[string][]string{"p2": wrap2}
	if p2, err = c.Up(l.Site("s2").Hosts[0], "p2", append([]string{"--join", tok}, extra...)...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := c.WaitPeers(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// Wait for the endpoint records too: the TCP techniques need them.
	time.Sleep(2500 * time.Millisecond)
	return c, p1, p2
}

// TestFallbackWithoutNetRaw: between two sites that block UDP, Traversing-
// TCP carries the traffic; when one pvcd runs without CAP_NET_RAW (it can
// neither capture its SYN nor inject the peer's), the pair falls back to
// the next technique, TCP simultaneous open, and says why.
func TestFallbackWithoutNetRaw(t *testing.T) {
	netlab.RequireTools(t, "setpriv")
	_, p1, p2 := startPair(t, netlab.UDPBlocked, netlab.UDPBlocked,
		[]string{"setpriv", "--bounding-set", "-net_raw", "--inh-caps", "-net_raw", "--"})
	if out := p2.Proc.Output(); !strings.Contains(out, "Traversing-TCP off") {
		t.Fatalf("p2 (no CAP_NET_RAW) did not turn Traversing-TCP off:\n%s", out)
	}
	start := time.Now()
	if _, err := netlab.Transfer(p1.Host, p2.Host, p2.Status.VirtualIP, 0, 4<<20); err != nil {
		t.Fatalf("first transfer: %v", err)
	}
	p, took := waitPathKind(t, p1, "p2", 20*time.Second, is("tcp-punch"))
	if p != "tcp-punch" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		peer, _ := p1.Peer(ctx, "p2")
		cancel()
		t.Fatalf("path p1 → p2: %q after %v, want tcp-punch (why: %s)\np1:\n%s\np2:\n%s", p, took, peer.Why,
			grepLines(p1.Proc.Output(), "TCP", "ttcp", "Traversing"), grepLines(p2.Proc.Output(), "TCP", "ttcp", "Traversing"))
	}
	t.Logf("p2 without CAP_NET_RAW: tcp-punch after %v from the first packet", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	peer, err := p2.Peer(ctx, "p1")
	cancel()
	if err != nil || !strings.Contains(peer.Why, "ttcp off: ") || !strings.Contains(peer.Why, "CAP_NET_RAW") {
		t.Errorf("pvcd peers on p2 does not say why Traversing-TCP failed: %q %v", peer.Why, err)
	}
	if _, err := netlab.Transfer(p1.Host, p2.Host, p2.Status.VirtualIP, 0, 4<<20); err != nil {
		t.Fatalf("transfer over tcp-punch: %v", err)
	}
	if p, _ := waitPathKind(t, p2, "p1", 5*time.Second, is("tcp-punch")); p != "tcp-punch" {
		t.Errorf("path p2 → p1: %q, want tcp-punch", p)
	}
	t.Logf("why on p2: %s", peer.Why)
}

// TestTechniquesOff: with --paths none, two cone sites talk over the relay
// only, and pvcd peers says that ICE is off.
func TestTechniquesOff(t *testing.T) {
	_, p1, p2 := startPair(t, netlab.Cone, netlab.Cone, nil, "--paths", "none")
	if _, err := netlab.Transfer(p1.Host, p2.Host, p2.Status.VirtualIP, 0, 1<<20); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	peer, err := p1.Peer(ctx, "p2")
	if err != nil {
		t.Fatal(err)
	}
	if peer.Path != "relay" || !strings.Contains(peer.Why, "ice off") {
		t.Fatalf("with --paths none: path %q why %q, want relay and 'ice off'", peer.Path, peer.Why)
	}
}

// TestUPnPByPvcd: pvcd at a UPnP site maps its port on the real
// miniupnpd (the description names the cluster and the host), a peer
// reaches it on the mapping, and `pvcd down` deletes the mapping; with
// "upnp deny" in the local policy nothing is mapped and the peer's path
// is a punched hole instead.
func TestUPnPByPvcd(t *testing.T) {
	netlab.RequireTools(t, "upnpc")
	pol := filepath.Join(t.TempDir(), "local.txt")
	if err := os.WriteFile(pol, []byte("upnp deny\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, deny := range []bool{false, true} {
		t.Run(map[bool]string{false: "allowed", true: "denied"}[deny], func(t *testing.T) {
			var extra []string
			if deny {
				extra = []string{"--local-policy", pol}
			}
			c, p1, p2 := startPair(t, netlab.Cone, netlab.UPnP, nil, extra...)
			site := c.Lab.Site("s2")
			list := func() string {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				out, err := site.Hosts[0].Run(ctx, "upnpc", "-i", "-u", site.UPnPRootDesc(), "-l")
				if err != nil {
					t.Fatalf("upnpc -l: %v\n%s", err, out)
				}
				return out
			}
			want := fmt.Sprintf("%d->%s:%d 'pvc lab p2'", p2.Status.Port, site.Hosts[0].Addr, p2.Status.Port)
			if _, err := netlab.Transfer(p1.Host, p2.Host, p2.Status.VirtualIP, 0, 1<<20); err != nil {
				t.Fatal(err)
			}
			wantPath := "upnp"
			if deny {
				wantPath = "punched"
			}
			if p, took := waitPathKind(t, p1, "p2", 10*time.Second, is(wantPath)); p != wantPath {
				t.Fatalf("path p1 → p2: %q after %v, want %s\n%s", p, took, wantPath, list())
			}
			l := list()
			if strings.Contains(l, want) == deny {
				t.Fatalf("mapping %q listed: %v, want %v:\n%s", want, !deny, !deny, l)
			}
			if deny {
				if out := p2.Proc.Output(); !strings.Contains(out, "UPnP off: the local policy denies it") {
					t.Errorf("p2 does not say UPnP is off:\n%s", grepLines(out, "UPnP", "upnp"))
				}
				return
			}
			if err := p2.Proc.Stop(10 * time.Second); err != nil {
				t.Fatal(err)
			}
			if l := list(); strings.Contains(l, "'pvc lab p2'") {
				t.Fatalf("mapping left after pvcd stopped:\n%s", l)
			}
		})
	}
}
