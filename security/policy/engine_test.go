package policy

import (
	"net/netip"
	"testing"
)

var (
	inside  = netip.MustParseAddr("192.0.2.50")
	outside = netip.MustParseAddr("203.0.113.9")
	selfIP  = netip.MustParseAddr("240.7.0.1")
	peerIP  = netip.MustParseAddr("240.7.0.2")
)

func flow(proto Proto, dir Direction, port uint16) *Flow {
	f := &Flow{Proto: proto, Dir: dir, LocalIP: selfIP, RemoteIP: peerIP, LocalPort: 40000, RemotePort: 40001}
	if dir == Inbound {
		f.LocalPort = port
	} else {
		f.RemotePort = port
	}
	return f
}

func engine(t testing.TB, localSrc string, self Identity) *Engine {
	t.Helper()
	var l *Local
	if localSrc != "" {
		var err error
		if l, err = ParseLocal([]byte(localSrc)); err != nil {
			t.Fatal(err)
		}
	}
	e, err := NewEngine(parseGlobal(t), l, self)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestGlobalRules(t *testing.T) {
	worker := Identity{Name: "w1", Groups: []string{"workers"}}
	head := Identity{Name: "head", Groups: []string{"head", "web"}}
	e := engine(t, "", worker) // this host is a worker
	peerHead := &Peer{Name: "head", Groups: []string{"head", "web"}, Underlay: inside}
	peerWorker := &Peer{Name: "w2", Groups: []string{"workers"}, Underlay: inside}
	evil := &Peer{Name: "evil", Groups: []string{"admin"}, Underlay: inside}
	admin := &Peer{Name: "root", Groups: []string{"admin"}, Underlay: inside}
	for _, tc := range []struct {
		name  string
		e     *Engine
		f     *Flow
		p     *Peer
		allow bool
		rule  int
	}{
		{"worker -> head slurmctld", e, flow(ProtoTCP, Outbound, 6817), peerHead, true, 1},
		{"worker -> head top of range", e, flow(ProtoTCP, Outbound, 6819), peerHead, true, 1},
		{"worker -> head past range", e, flow(ProtoTCP, Outbound, 6820), peerHead, false, -1},
		{"worker -> head udp same port", e, flow(ProtoUDP, Outbound, 6817), peerHead, false, -1},
		{"head -> worker slurmd (inbound)", e, flow(ProtoTCP, Inbound, 6818), peerHead, true, 2},
		{"worker -> worker slurmd", e, flow(ProtoTCP, Outbound, 6818), peerWorker, false, -1},
		{"ping anyone", e, flow(ProtoICMP, Outbound, 0), peerWorker, true, 3},
		{"web on head, tcp", e, flow(ProtoTCP, Outbound, 443), peerHead, true, 4},
		{"web on head, udp (proto any with ports)", e, flow(ProtoUDP, Outbound, 80), peerHead, true, 4},
		{"web port for a protocol without ports", e, flow(Proto(47), Outbound, 0), peerHead, false, -1},
		{"evil is denied first even though admin", e, flow(ProtoTCP, Inbound, 22), evil, false, 0},
		{"admin reaches anything", e, flow(Proto(47), Inbound, 0), admin, true, 5},
		{"admin is not reached by the rule's reverse", e, flow(ProtoTCP, Outbound, 22), admin, false, -1},
		{"head host: worker reaches slurmctld", engine(t, "", head), flow(ProtoTCP, Inbound, 6817), peerWorker, true, 1},
		{"head host: web reached by anyone", engine(t, "", head), flow(ProtoUDP, Inbound, 443), peerWorker, true, 4},
	} {
		d := tc.e.Decide(tc.f, tc.p)
		if d.Allow != tc.allow || d.Layer != LayerGlobal || d.Rule != tc.rule {
			t.Errorf("%s: %+v (%s), want allow=%v by global rule %d", tc.name, d, tc.e.Explain(d), tc.allow, tc.rule)
		}
	}
}

func TestLocalAndCombination(t *testing.T) {
	self := Identity{Name: "w1", Groups: []string{"workers", "web"}}
	const local = `
domain 192.0.2.0/24
outside inbound deny
outside outbound allow
inbound tcp 80, 6818
inbound icmp
`
	e := engine(t, local, self)
	admin := func(u netip.Addr) *Peer { return &Peer{Name: "root", Groups: []string{"admin"}, Underlay: u} }
	head := func(u netip.Addr) *Peer { return &Peer{Name: "head", Groups: []string{"head"}, Underlay: u} }
	for _, tc := range []struct {
		name  string
		f     *Flow
		p     *Peer
		allow bool
		layer Layer
		rule  int
	}{
		{"inside, port listed, global allows", flow(ProtoTCP, Inbound, 6818), head(inside), true, LayerGlobal, 2},
		{"outside peer may not come in", flow(ProtoTCP, Inbound, 6818), head(outside), false, LayerLocal, LocalOutside},
		{"unknown underlay is outside", flow(ProtoTCP, Inbound, 6818), head(netip.Addr{}), false, LayerLocal, LocalOutside},
		{"v4-mapped underlay is inside", flow(ProtoTCP, Inbound, 6818), head(netip.MustParseAddr("::ffff:192.0.2.7")), true, LayerGlobal, 2},
		{"we may go out to an outside peer", flow(ProtoTCP, Outbound, 6817), head(outside), true, LayerGlobal, 1},
		{"global allows admin, local port not listed", flow(ProtoTCP, Inbound, 22), admin(inside), false, LayerLocal, LocalInbound},
		{"global allows admin, local port listed", flow(ProtoTCP, Inbound, 80), admin(inside), true, LayerGlobal, 4},
		{"local allows udp 80? no: only tcp listed", flow(ProtoUDP, Inbound, 80), admin(inside), false, LayerLocal, LocalInbound},
		{"local allows icmp, global allows icmp", flow(ProtoICMP, Inbound, 0), head(inside), true, LayerGlobal, 3},
		{"local allows port 6818 but global denies that peer", flow(ProtoTCP, Inbound, 6818), &Peer{Name: "x", Underlay: inside}, false, LayerGlobal, -1},
		{"local port filter does not apply outbound", flow(ProtoTCP, Outbound, 443), head(inside), false, LayerGlobal, -1},
	} {
		d := e.Decide(tc.f, tc.p)
		if d.Allow != tc.allow || d.Layer != tc.layer || d.Rule != tc.rule {
			t.Errorf("%s: %+v (%s), want allow=%v by %v rule %d", tc.name, d, e.Explain(d), tc.allow, tc.layer, tc.rule)
		}
	}

	// Outbound to outside denied locally, though the global policy allows.
	e2 := engine(t, "domain 192.0.2.0/24\noutside outbound deny\n", Identity{Name: "w1", Groups: []string{"workers"}})
	d := e2.Decide(flow(ProtoTCP, Outbound, 6817), head(outside))
	if d.Allow || d.Layer != LayerLocal || d.Rule != LocalOutside {
		t.Errorf("outbound to outside: %+v, want denied by local", d)
	}
	if d := e2.Decide(flow(ProtoTCP, Outbound, 6817), head(inside)); !d.Allow {
		t.Errorf("outbound inside: %+v, want allowed", d)
	}
	// inbound none closes every port.
	e3 := engine(t, "inbound none\n", Identity{Name: "w1", Groups: []string{"workers"}})
	if d := e3.Decide(flow(ProtoTCP, Inbound, 6818), head(inside)); d.Allow || d.Rule != LocalInbound {
		t.Errorf("inbound none: %+v", d)
	}
}

func TestNoGlobalPolicy(t *testing.T) {
	e, err := NewEngine(nil, nil, Identity{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if d := e.Decide(flow(ProtoUDP, Inbound, 9), &Peer{Name: "b"}); !d.Allow || d.Rule != -1 {
		t.Errorf("no policy: %+v, want allowed by the default", d)
	}
}

func TestExplain(t *testing.T) {
	e := engine(t, "", Identity{Name: "w1", Groups: []string{"workers"}})
	d := e.Decide(flow(ProtoTCP, Outbound, 6817), &Peer{Name: "head", Groups: []string{"head"}})
	if got, want := e.Explain(d), "allow by global rule 2 (line 5): allow from group:workers to group:head proto tcp port 6817-6819"; got != want {
		t.Errorf("Explain = %q, want %q", got, want)
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	e := engine(t, localSrc, Identity{Name: "w1", Groups: []string{"workers"}})
	f := flow(ProtoTCP, Inbound, 6818)
	p := &Peer{Name: "head", Groups: []string{"head", "web"}, Underlay: inside}
	if n := testing.AllocsPerRun(100, func() { e.Decide(f, p) }); n != 0 {
		t.Errorf("Decide allocates %v times per flow", n)
	}
}

// BenchmarkDecide measures one policy decision per new flow, with a
// reference: a single 5-tuple map lookup, the cheapest conceivable
// connection-table check.
func BenchmarkDecide(b *testing.B) {
	e := engine(b, localSrc, Identity{Name: "w1", Groups: []string{"workers"}})
	p := &Peer{Name: "head", Groups: []string{"head", "web"}, Underlay: inside}
	for _, bc := range []struct {
		name string
		f    *Flow
	}{
		{"inbound-allowed", flow(ProtoTCP, Inbound, 6818)},
		{"outbound-default", flow(ProtoUDP, Outbound, 9999)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				e.Decide(bc.f, p)
			}
		})
	}
	b.Run("map-lookup-reference", func(b *testing.B) {
		type key struct {
			a, b netip.Addr
			p, q uint16
		}
		m := map[key]bool{{selfIP, peerIP, 1, 2}: true}
		k := key{selfIP, peerIP, 1, 2}
		b.ReportAllocs()
		for b.Loop() {
			_ = m[k]
		}
	})
}
