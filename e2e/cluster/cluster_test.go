package cluster

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
	"github.com/pvc-project/pvc/pvcd/control"
)

// TestClusterAcrossNATs: a broker on the Internet, the master's pvcd at a
// public site, and two hosts enrolled with a token through the broker at a
// cone NAT site and a firewall site. They reach each other by name (ping
// through pvcd's DNS), carry a TCP transfer with checksum, answer dig A and
// PTR, show their paths in `pvcd peers`, and leave nothing behind after
// `pvcd down`.
func TestClusterAcrossNATs(t *testing.T) {
	netlab.RequireTools(t, "ping", "dig")
	_, mast, cone, fw := startThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Ping by name, through pvcd's DNS and the overlay.
	for _, pair := range [][2]*vcluster.Node{{cone, fw}, {fw, cone}, {cone, mast}, {mast, fw}} {
		from, to := pair[0], pair[1]
		out, err := from.Host.Run(ctx, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "3", to.Name+".lab.pvc")
		if err != nil || !strings.Contains(out, " 0% packet loss") {
			t.Errorf("ping %s -> %s.lab.pvc: %v\n%s", from.Name, to.Name, err, out)
		}
	}
	// dig A and PTR.
	out, err := cone.Host.Run(ctx, "dig", "+short", "@"+cone.Status.VirtualIP.String(), "fw1.lab.pvc", "A")
	if err != nil || strings.TrimSpace(out) != fw.Status.VirtualIP.String() {
		t.Errorf("dig fw1.lab.pvc A: %q, %v; want %s", out, err, fw.Status.VirtualIP)
	}
	out, err = cone.Host.Run(ctx, "dig", "+short", "@"+cone.Status.VirtualIP.String(), "-x", fw.Status.VirtualIP.String())
	if err != nil || strings.TrimSpace(out) != "fw1.lab.pvc." {
		t.Errorf("dig -x %s: %q, %v; want fw1.lab.pvc.", fw.Status.VirtualIP, out, err)
	}
	// The hosts file carries the names too.
	if b, _ := os.ReadFile(cone.Hosts); !strings.Contains(string(b), fw.Status.VirtualIP.String()+" fw1.lab.pvc") {
		t.Errorf("cone1's hosts file lacks fw1:\n%s", b)
	}

	// 100 MiB of TCP from the cone host to the firewall host, checked.
	mbps := transfer(t, cone.Host, fw.Host, fw.Status.VirtualIP, 100<<20)
	t.Logf("100 MiB cone1 -> fw1 over the overlay: %.0f Mbit/s, SHA-256 ok", mbps)

	// Paths as pvcd peers shows them.
	for _, n := range []*vcluster.Node{mast, cone, fw} {
		var rows []string
		ps, err := n.Peers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			rows = append(rows, p.Name+"="+p.Path+" "+p.Remote)
			if p.Path == "direct" && p.LastHandshake.IsZero() {
				t.Errorf("%s: %s is direct but never shook hands", n.Name, p.Name)
			}
		}
		t.Logf("pvcd peers on %s: %s", n.Name, strings.Join(rows, ", "))
	}
	if p, err := cone.Peer(ctx, "fw1"); err != nil || p.Path != "direct" || p.BytesOut < 100<<20 {
		t.Errorf("cone1 -> fw1: %+v, %v; want a direct path that carried the 100 MiB", p, err)
	}
	// pvcd ping names the path.
	cl := control.NewClient(cone.State)
	r, err := cl.Ping(ctx, "fw1")
	if err != nil || !strings.HasPrefix(r.Path, "direct") {
		t.Errorf("pvcd ping fw1: %+v, %v", r, err)
	}
	if _, err := cl.Ping(ctx, "nobody"); err == nil || !strings.Contains(err.Error(), "unknown peer") {
		t.Errorf("pvcd ping nobody: %v", err)
	}

	// pvcd down: the TUN device and the names are gone.
	if err := cl.Down(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cone.Proc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("pvcd did not exit after pvcd down")
	}
	if out, _ := cone.Host.Run(ctx, "ip", "link", "show", "pvc0"); !strings.Contains(out, "does not exist") {
		t.Errorf("pvc0 still exists after pvcd down: %s", out)
	}
	if b, _ := os.ReadFile(cone.Hosts); strings.Contains(string(b), "lab.pvc") {
		t.Errorf("names left in the hosts file after pvcd down:\n%s", b)
	}
	if _, err := os.Stat(control.SocketPath(cone.State)); !os.IsNotExist(err) {
		t.Errorf("control socket left after pvcd down: %v", err)
	}
}

// transfer is netlab.Transfer, failing the test on error.
func transfer(t *testing.T, from, to *netlab.Host, dst netip.Addr, size int) float64 {
	t.Helper()
	mbps, err := netlab.Transfer(from, to, dst, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	return mbps
}
