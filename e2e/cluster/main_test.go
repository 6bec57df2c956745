// Package cluster tests PVC end to end with the real binaries in the
// network lab: pvc-broker on the Internet, the master's pvcd and enrolled
// peers behind real NATs and firewalls.
package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
)

var bin string // directory of the freshly built binaries

func TestMain(m *testing.M) { vcluster.Main(m, &bin) }

// newCluster builds the lab and a cluster "lab" with one broker on b1.
func newCluster(t *testing.T, spec netlab.Spec) *vcluster.Cluster {
	t.Helper()
	l := netlab.New(t, spec)
	c := vcluster.NewT(t, l, "lab", bin)
	if err := c.StartBroker(l.Internet("b1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Init(); err != nil {
		t.Fatal(err)
	}
	return c
}

func up(t *testing.T, c *vcluster.Cluster, h *netlab.Host, name string, extra ...string) *vcluster.Node {
	t.Helper()
	n, err := c.Up(h, name, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// startThree builds a lab with a broker on b1 and three sites (public,
// cone NAT, firewall), brings up the master's pvcd and two hosts enrolled
// with a token through the broker, and waits until every peer knows every
// other.
func startThree(t *testing.T) (c *vcluster.Cluster, mast, cone, fw *vcluster.Node) {
	t.Helper()
	c = newCluster(t, netlab.Spec{Internet: []string{"b1"}, Sites: []netlab.SiteSpec{
		{Name: "mast", Kind: netlab.Public},
		{Name: "cone", Kind: netlab.Cone},
		{Name: "fw", Kind: netlab.Firewall},
	}})
	tok, err := c.Token(2)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	mast = up(t, c, c.Lab.Site("mast").Hosts[0], "master", "--master-key", c.MasterKey())
	cone = up(t, c, c.Lab.Site("cone").Hosts[0], "cone1", "--join", tok)
	fw = up(t, c, c.Lab.Site("fw").Hosts[0], "fw1", "--join", tok)
	t.Logf("three pvcd up (master, two enrolled through the broker) in %v", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitPeers(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("every peer knows every other after %v", time.Since(start).Round(time.Millisecond))
	return c, mast, cone, fw
}
