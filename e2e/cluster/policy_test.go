package cluster

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
)

// TestGlobalPolicyPorts: the master signs a global policy with `pvcd
// policy sign` while the cluster runs; its pvcd publishes it through the
// broker and every peer enforces it within seconds. On fw1, TCP and UDP
// port 8080 (allowed by a rule) are reachable from cone1; port 9090
// (denied by a rule) and 9191 (denied by the default) are not: the echo
// servers on fw1 never see the attempts.
func TestGlobalPolicyPorts(t *testing.T) {
	netlab.RequireTools(t, "ping")
	c, _, cone, fw := startThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	echo := map[uint16]*netlab.Echo{}
	for _, port := range []uint16{8080, 9090, 9191} {
		e, err := netlab.StartEcho(fw.Host, fw.Status.VirtualIP, port)
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		echo[port] = e
	}
	dst := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(fw.Status.VirtualIP, port) }
	// The cluster's first policy (from cluster init) allows everything.
	if _, err := netlab.AskTCP(cone.Host, dst(9090), 5*time.Second); err != nil {
		t.Fatalf("port 9090 before the policy: %v", err)
	}

	src := `# lab test policy
default deny
allow from any to any proto icmp
allow from any to peer:fw1 proto any port 8080
deny from any to peer:fw1 proto tcp port 9090
`
	file := filepath.Join(c.Dir, "policy.txt")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Pvcd("policy", "sign", "--master-key", c.MasterKey(), file); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*vcluster.Node{cone, fw} {
		if err := waitLog(n, 15*time.Second, "global policy in force", "version=2"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("policy v2 in force on cone1 and fw1 %v after pvcd policy sign", time.Since(start).Round(time.Millisecond))

	// Allowed: TCP and UDP 8080.
	if _, err := netlab.AskTCP(cone.Host, dst(8080), 5*time.Second); err != nil {
		t.Errorf("TCP 8080 (allowed): %v", err)
	}
	sock, err := netlab.UDPSocket(cone.Host, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	if _, err := netlab.AskUDP(sock, dst(8080), 5*time.Second); err != nil {
		t.Errorf("UDP 8080 (allowed): %v", err)
	}
	// Denied: TCP 9090 by a rule, TCP 9191 and UDP 9090 by the default.
	before := map[uint16]int{9090: len(echo[9090].Seen()), 9191: len(echo[9191].Seen())}
	for _, port := range []uint16{9090, 9191} {
		if _, err := netlab.AskTCP(cone.Host, dst(port), 2*time.Second); !errors.Is(err, netlab.ErrNoAnswer) {
			t.Errorf("TCP %d (denied): %v, want no answer", port, err)
		}
	}
	if _, err := netlab.AskUDP(sock, dst(9090), 2*time.Second); !errors.Is(err, netlab.ErrNoAnswer) {
		t.Errorf("UDP 9090 (denied): %v, want no answer", err)
	}
	for port, n := range before {
		if got := len(echo[port].Seen()); got != n {
			t.Errorf("the echo on fw1 port %d saw %d new contacts after the policy denied it", port, got-n)
		}
	}
	// ICMP is allowed: the overlay itself still carries.
	if out, err := cone.Host.Run(ctx, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", fw.Status.VirtualIP.String()); err != nil {
		t.Errorf("ping fw1 under the policy: %v\n%s", err, out)
	}
}

// TestLocalPolicyOutsideInbound: a host whose site administrator's local
// policy says "outside inbound deny" for its domain (its site's LAN and
// the NAT's public address, which is where the brokers see the site's
// hosts) is unreachable from peers outside the domain (another cone NAT
// site, the master's public site), reachable from a peer inside it (the
// same site), and can still open connections to the outside.
func TestLocalPolicyOutsideInbound(t *testing.T) {
	netlab.RequireTools(t, "ping")
	c := newCluster(t, netlab.Spec{Internet: []string{"b1"}, Sites: []netlab.SiteSpec{
		{Name: "mast", Kind: netlab.Public},
		{Name: "home", Kind: netlab.Cone, Hosts: 2},
		{Name: "cone", Kind: netlab.Cone},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tok, err := c.Token(3)
	if err != nil {
		t.Fatal(err)
	}
	site := c.Lab.Site("home")
	local := filepath.Join(c.Dir, "guard.local")
	policy := "domain " + site.LAN.String() + " " + netip.PrefixFrom(site.PublicAddr, 32).String() + "\noutside inbound deny\n"
	if err := os.WriteFile(local, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	mast := up(t, c, c.Lab.Site("mast").Hosts[0], "master", "--master-key", c.MasterKey())
	guard := up(t, c, site.Hosts[0], "guard", "--join", tok, "--local-policy", local)
	inside := up(t, c, site.Hosts[1], "inside", "--join", tok)
	cone := up(t, c, c.Lab.Site("cone").Hosts[0], "cone1", "--join", tok)
	if err := c.WaitPeers(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	g, err := netlab.StartEcho(guard.Host, guard.Status.VirtualIP, 8080)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	co, err := netlab.StartEcho(cone.Host, cone.Status.VirtualIP, 8080)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	gdst := netip.AddrPortFrom(guard.Status.VirtualIP, 8080)

	// Inside the domain: reachable. (A peer's underlay address comes from
	// its endpoint record; until that arrives the peer counts as outside,
	// and a refused first packet leaves no state: retry for a while.)
	var inErr error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		if _, inErr = netlab.AskTCP(inside.Host, gdst, 2*time.Second); inErr == nil {
			break
		}
	}
	if inErr != nil {
		t.Fatalf("inside -> guard (same domain): %v", inErr)
	}
	// Outside: nothing arrives, whatever the protocol.
	for _, from := range []*vcluster.Node{cone, mast} {
		if _, err := netlab.AskTCP(from.Host, gdst, 2*time.Second); !errors.Is(err, netlab.ErrNoAnswer) {
			t.Errorf("TCP %s -> guard: %v, want no answer", from.Name, err)
		}
		sock, err := netlab.UDPSocket(from.Host, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := netlab.AskUDP(sock, gdst, 2*time.Second); !errors.Is(err, netlab.ErrNoAnswer) {
			t.Errorf("UDP %s -> guard: %v, want no answer", from.Name, err)
		}
		sock.Close()
		if out, err := from.Host.Run(ctx, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", guard.Status.VirtualIP.String()); err == nil {
			t.Errorf("ping %s -> guard answered:\n%s", from.Name, out)
		}
		if g.SeenFrom(from.Status.VirtualIP) {
			t.Errorf("the echo on guard saw %s", from.Name)
		}
	}
	// Outbound from guard to the outside still works, and its answers
	// come back (the flow is guard's).
	if _, err := netlab.AskTCP(guard.Host, netip.AddrPortFrom(cone.Status.VirtualIP, 8080), 5*time.Second); err != nil {
		t.Errorf("guard -> cone1 (outbound): %v", err)
	}
	if out, err := guard.Host.Run(ctx, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", mast.Status.VirtualIP.String()); err != nil {
		t.Errorf("ping guard -> master (outbound): %v\n%s", err, out)
	}
	if !co.SeenFrom(guard.Status.VirtualIP) {
		t.Error("cone1's echo did not see guard")
	}
	// ... and does not open the door: cone1 still cannot reach guard.
	if _, err := netlab.AskTCP(cone.Host, gdst, 2*time.Second); !errors.Is(err, netlab.ErrNoAnswer) {
		t.Errorf("TCP cone1 -> guard after guard's outbound flows: %v, want no answer", err)
	}
	if got := g.Seen(); len(got) != 1 {
		t.Errorf("guard's echo saw %v, want only inside's connection", got)
	}
}

// waitLog waits until a line of the node's pvcd log holds every one of
// the given strings.
func waitLog(n *vcluster.Node, within time.Duration, parts ...string) error {
	deadline := time.Now().Add(within)
	for {
		for _, line := range strings.Split(n.Proc.Output(), "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return errors.New(n.Name + ": no log line with " + strings.Join(parts, ", ") + " after " + within.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
