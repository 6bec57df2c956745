package tcppunch_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/vnet/tcppunch"
)

// end is one side of a punch: a lab host, its public address (the port is
// predicted to be the local one) and the local port.
type end struct {
	host   *netlab.Host
	public netip.Addr
}

func siteEnd(lab *netlab.Lab, site string) end {
	s := lab.Site(site)
	return end{s.Hosts[0], s.PublicAddr}
}

// punchPair punches between a and b at once on port and exchanges checked
// data. It returns the longer of the two Punch times.
func punchPair(ctx context.Context, cfg tcppunch.Config, a, b end, port uint16) (time.Duration, error) {
	return punchPairSkew(ctx, cfg, a, b, port, 0)
}

// punchPairSkew starts b's side skew after a's.
func punchPairSkew(ctx context.Context, cfg tcppunch.Config, a, b end, port uint16, skew time.Duration) (time.Duration, error) {
	type res struct {
		c    net.Conn
		took time.Duration
		err  error
	}
	run := func(me, peer end, out chan<- res) {
		var r res
		start := time.Now()
		r.err = me.host.Do(func() error {
			var err error
			r.c, err = cfg.Punch(ctx, netip.AddrPortFrom(me.host.Addr, port), netip.AddrPortFrom(peer.public, port))
			return err
		})
		r.took = time.Since(start)
		out <- r
	}
	ra, rb := make(chan res, 1), make(chan res, 1)
	go run(a, b, ra)
	go func() { time.Sleep(skew); run(b, a, rb) }()
	x, y := <-ra, <-rb
	for _, r := range []res{x, y} {
		if r.c != nil {
			defer r.c.Close()
		}
	}
	if err := errors.Join(x.err, y.err); err != nil {
		return 0, err
	}
	return max(x.took, y.took), netlab.Exchange(x.c, y.c, 256<<10)
}

func TestPunchUDPBlockedSites(t *testing.T) {
	lab := netlab.New(t, netlab.Spec{Sites: []netlab.SiteSpec{
		{Name: "a", Kind: netlab.UDPBlocked},
		{Name: "b", Kind: netlab.UDPBlocked},
		{Name: "f", Kind: netlab.Firewall, UDPBlocked: true},
	}})
	a, b, f := siteEnd(lab, "a"), siteEnd(lab, "b"), siteEnd(lab, "f")
	// Without punching, neither side can reach the other.
	if err := a.host.Do(func() error {
		c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(f.host.Addr, 7000).String(), time.Second)
		if err == nil {
			c.Close()
			return errors.New("a plain connect crossed the firewall")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		x, y end
		port uint16
		skew time.Duration
	}{{"cone-cone", a, b, 7001, 0}, {"cone-firewall", a, f, 7002, 0}, {"cone-cone, one side 1.5 s late", a, b, 7003, 1500 * time.Millisecond}} {
		ctx, cancel := context.WithTimeout(t.Context(), 8*time.Second)
		took, err := punchPairSkew(ctx, tcppunch.Config{}, tc.x, tc.y, tc.port, tc.skew)
		cancel()
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		t.Logf("%s: connected in %v", tc.name, took.Round(time.Millisecond))
	}
}

// BenchmarkPunchMatrix measures which pairs of site kinds TCP simultaneous open
// crosses, without and with a low-TTL first SYN, and checks the result
// against tcppunch.Crosses. `make bench` runs it (a measurement: the NAT-matrix test of e2e/traversal is the check that runs in CI).
func BenchmarkPunchMatrix(bm *testing.B) {
	var t testing.TB = bm
	kinds := netlab.Kinds
	name := func(k netlab.Kind, ab string) string { return siteName(k) + ab }
	var sites []netlab.SiteSpec
	for _, k := range kinds {
		sites = append(sites, netlab.SiteSpec{Name: name(k, "a"), Kind: k}, netlab.SiteSpec{Name: name(k, "b"), Kind: k})
	}
	lab := netlab.New(t, netlab.Spec{Sites: sites})
	ttl := func(k netlab.Kind) int {
		switch k {
		case netlab.Public, netlab.HostFW:
			return 1
		case netlab.DoubleNAT:
			return 3
		}
		return 2
	}
	type cell struct {
		took time.Duration
		err  error
	}
	results := map[[3]string]cell{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	port := uint16(7500)
	for i, ka := range kinds {
		for _, kb := range kinds[i:] {
			for _, low := range []bool{false, true} {
				port++
				wg.Add(1)
				go func(ka, kb netlab.Kind, low bool, port uint16) {
					defer wg.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					cfg := tcppunch.Config{}
					if low {
						// One TTL for both ends: enough for the deeper one's routers.
						cfg.OpenTTL = max(ttl(ka), ttl(kb))
					}
					ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
					defer cancel()
					took, err := punchPair(ctx, cfg, siteEnd(lab, name(ka, "a")), siteEnd(lab, name(kb, "b")), port)
					mu.Lock()
					results[[3]string{string(ka), string(kb), fmt.Sprint(low)}] = cell{took, err}
					mu.Unlock()
				}(ka, kb, low, port)
			}
		}
	}
	wg.Wait()
	var b strings.Builder
	fmt.Fprintf(&b, "\nTCP simultaneous open: each cell plain / with low-TTL first SYN\n%-11s", "")
	for _, k := range kinds {
		fmt.Fprintf(&b, " %-19s", k)
	}
	b.WriteString("\n")
	for i, ka := range kinds {
		fmt.Fprintf(&b, "%-11s", ka)
		for j, kb := range kinds {
			if j < i {
				fmt.Fprintf(&b, " %-19s", "")
				continue
			}
			var parts []string
			for _, low := range []bool{false, true} {
				c := results[[3]string{string(ka), string(kb), fmt.Sprint(low)}]
				got := c.err == nil
				s := "no"
				if got {
					s = fmt.Sprintf("%dms", c.took.Milliseconds())
				}
				if want := tcppunch.Crosses(string(ka), string(kb), low); got != want {
					s += "!"
					t.Errorf("%s with %s, low TTL %v: crossed %v, Crosses says %v (%v)", ka, kb, low, got, want, c.err)
				}
				parts = append(parts, s)
			}
			fmt.Fprintf(&b, " %-19s", strings.Join(parts, " / "))
		}
		b.WriteString("\n")
	}
	t.Log(b.String())
}

// siteName is a short site name for a kind (site names have at most 10
// characters); the matrix adds "a" or "b".
func siteName(k netlab.Kind) string {
	return map[netlab.Kind]string{
		netlab.Public: "pub", netlab.HostFW: "hfw", netlab.Firewall: "fw", netlab.Cone: "cone",
		netlab.Symmetric: "sym", netlab.UDPBlocked: "ub", netlab.UPnP: "upnp", netlab.DoubleNAT: "dnat",
	}[k]
}
