package netlab

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// everyKind is a lab with one site of every kind of LAB.md, plus a
// hostfw site whose UDP is blocked (the modifier on a host kind).
func everyKind() Spec {
	spec := Spec{Internet: []string{"srv1", "srv2"}}
	for _, k := range Kinds {
		spec.Sites = append(spec.Sites, SiteSpec{Name: strings.ReplaceAll(string(k), "-", ""), Kind: k})
	}
	spec.Sites = append(spec.Sites, SiteSpec{Name: "fwnoudp", Kind: HostFW, UDPBlocked: true})
	return spec
}

// TestKindsBehave measures every site kind with real traffic and compares
// it with LAB.md's table: public address and number of translations,
// mapping toward two destinations, outbound and reply traffic, and
// unsolicited inbound UDP and TCP.
func TestKindsBehave(t *testing.T) {
	l := New(t, everyKind())
	p, err := NewProber(l.Internet("srv1"), l.Internet("srv2"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	got, err := p.ProbeAll(l.Sites())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%-12s %s", "site", BehaviourHeader)
	for i, s := range l.Sites() {
		t.Logf("%-12s %s", s.Name(), got[i].Row())
		if d := got[i].Diff(Expected(s)); d != "" {
			t.Errorf("site %s (%s): %s", s.Name(), s.Kind(), d)
		}
	}
}

// TestUPnP maps a port with the real upnpc against the router's real
// miniupnpd, sends through it, removes it and sees it closed.
func TestUPnP(t *testing.T) {
	l := New(t, Spec{Internet: []string{"srv1"}, Sites: []SiteSpec{{Name: "home", Kind: UPnP}}})
	RequireTools(t, "upnpc")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := ProbeUPnP(ctx, l.Site("home"), l.Internet("srv1"), 700*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Mapped {
		t.Fatalf("upnpc did not add the mapping:\n%s", r.ClientOutput)
	}
	if !r.MappingListed {
		t.Errorf("upnpc -l did not list the mapping:\n%s", r.ClientOutput)
	}
	if !r.Arrived {
		t.Errorf("no datagram arrived through the mapping %v", r.ExternalAddr)
	}
	if !r.ClosedAfter {
		t.Errorf("after removing the mapping, a new sender still got through")
	}
}

var _ = netip.Addr{}

// TestSiteHostsReachEachOther: two hosts of one NATed site talk over
// their LAN (bridged frames pass the router's FORWARD chain when
// br_netfilter is loaded, as on this kernel).
func TestSiteHostsReachEachOther(t *testing.T) {
	lab := New(t, Spec{Sites: []SiteSpec{{Name: "home", Kind: Cone, Hosts: 2}, {Name: "fw", Kind: Firewall, Hosts: 2}}})
	for _, s := range []string{"home", "fw"} {
		h := lab.Site(s).Hosts
		if _, err := Transfer(h[0], h[1], h[1].Addr, 0, 64<<10); err != nil {
			t.Errorf("%s: %s → %s over the LAN: %v", s, h[0].Name, h[1].Name, err)
		}
	}
}
