package overlay

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/security/policy"
	"github.com/pvc-project/pvc/vnet/bind/bindtest"
	"github.com/pvc-project/pvc/vnet/filter"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

const labPolicy = `default deny
allow from group:workers to group:head proto tcp port 6817
allow from any to any proto icmp
`

type peerMap map[netip.Addr]policy.Peer

func (m peerMap) PeerByIP(ip netip.Addr) (policy.Peer, bool) { p, ok := m[ip]; return p, ok }

// TestPolicyOnOverlay: with the policy filter between the TUN and
// wireguard-go on both peers (real TUNs, a cone NAT between them), a port
// the global policy allows is reachable over the overlay and one it denies
// is not, although a listener waits on it; the filter counts the refusal.
func TestPolicyOnOverlay(t *testing.T) {
	l := netlab.New(t, netlab.Spec{Sites: []netlab.SiteSpec{{Name: "pub", Kind: netlab.Public}, {Name: "cone", Kind: netlab.Cone}}})
	global, err := policy.ParseGlobal([]byte(labPolicy))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	hs, hc := l.Site("pub").Hosts[0], l.Site("cone").Hosts[0]
	ipS, ipC := netip.MustParseAddr("240.9.0.1"), netip.MustParseAddr("240.9.0.2")
	peers := peerMap{
		ipS: {Name: "server", Groups: []string{"head"}, Underlay: hs.Addr},
		ipC: {Name: "client", Groups: []string{"workers"}, Underlay: l.Site("cone").PublicAddr},
	}
	filters := map[string]*filter.Filter{}
	wrapFor := func(name string, groups []string, self netip.Addr) func(wgtun.Device) wgtun.Device {
		return func(d wgtun.Device) wgtun.Device {
			eng, err := policy.NewEngine(global, nil, policy.Identity{Name: name, Groups: groups})
			if err != nil {
				t.Fatal(err)
			}
			f, err := filter.New(d, filter.Config{Engine: eng, Peers: peers, LocalIP: self})
			if err != nil {
				t.Fatal(err)
			}
			filters[name] = f
			wg.Add(1)
			go func() { defer wg.Done(); _ = f.Run(ctx) }()
			return f
		}
	}
	relay := bindtest.NewRelay()
	srv := newFilteredNode(t, ctx, &wg, relay, hs, "server", ipS, wrapFor("server", []string{"head"}, ipS))
	cli := newFilteredNode(t, ctx, &wg, relay, hc, "client", ipC, wrapFor("client", []string{"workers"}, ipC))
	cli.addPeer(t, srv, true, srv.addr())
	srv.addPeer(t, cli, false)

	// Allowed: workers -> head, tcp 6817.
	if mbps := transferPort(t, hc, hs, ipS, 6817, 1<<20); mbps <= 0 {
		t.Fatal("no transfer on the allowed port")
	}
	// Denied: the same hosts, tcp 8080, with a listener waiting.
	var ln net.Listener
	if err := hs.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(ipS, 8080).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = hc.Do(func() error {
		c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(ipS, 8080).String(), 1500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err == nil {
		t.Fatal("a connection to the denied port 8080 succeeded")
	}
	st := filters["client"].Stats()
	denied := uint64(0)
	for _, r := range st.Rules {
		if !r.Decision.Allow {
			denied += r.Flows
		}
	}
	if denied == 0 {
		t.Errorf("the client's filter counted no refused flow: %+v", st)
	}
	t.Logf("allowed tcp 6817 carried 1 MiB; tcp 8080 refused (%v); client filter: %d flows, %d refused", err, st.Flows, denied)
}
