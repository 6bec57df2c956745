package overlay

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/vnet/bind"
	"github.com/pvc-project/pvc/vnet/bind/bindtest"
)

// BenchmarkOverlayVsReference measures TCP throughput (100 MiB, one
// stream) between two public lab hosts, directly (the reference) and over
// PVC's overlay (wireguard-go + PVC's Bind + real TUNs) in the same run,
// and reports the ratio.
func BenchmarkOverlayVsReference(b *testing.B) {
	l := netlab.New(b, netlab.Spec{Sites: []netlab.SiteSpec{{Name: "a", Kind: netlab.Public}, {Name: "b", Kind: netlab.Public}}})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	relay := bindtest.NewRelay()
	ha, hb := l.Site("a").Hosts[0], l.Site("b").Hosts[0]
	na := newNode(b, ctx, &wg, relay, ha, "a", netip.MustParseAddr("240.9.0.1"))
	nb := newNode(b, ctx, &wg, relay, hb, "b", netip.MustParseAddr("240.9.0.2"))
	na.addPeer(b, nb, true, nb.addr())
	nb.addPeer(b, na, false)
	transfer(b, ha, hb, nb.ip, 1<<20) // activates the peer
	waitPath(na, "b", bind.PathDirect, 5*time.Second)
	if p := na.path("b").Path; p != bind.PathDirect {
		b.Fatalf("no direct path: %s", p)
	}
	const size = 100 << 20
	var ref, ovl float64
	for b.Loop() {
		ref += transfer(b, ha, hb, hb.Addr, size)
		ovl += transfer(b, ha, hb, nb.ip, size)
	}
	n := float64(b.N)
	b.ReportMetric(ref/n, "ref-Mbit/s")
	b.ReportMetric(ovl/n, "overlay-Mbit/s")
	b.ReportMetric(ovl/ref, "overlay/ref")
}
