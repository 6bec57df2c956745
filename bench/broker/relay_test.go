package broker

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/security/bundle"
)

// nsDialer opens a client's sockets inside a lab host's namespace.
func nsDialer(h *netlab.Host) client.Dialer {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := h.Do(func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// BenchmarkRelayLab: relay throughput of one peer pair through pvc-broker
// on an Internet host of the network lab, over the peers' TLS sessions
// (1,400-byte datagrams, WireGuard-sized), against a plain TCP stream
// between the same two namespaces (two public sites on the lab's Internet
// bridge), three runs of each, interleaved; medians and their ratio. The
// broker runs with an unlimited relay rate (its default, 8 MiB/s per peer,
// would be what is measured otherwise).
func BenchmarkRelayLab(b *testing.B) {
	lab := netlab.New(b, netlab.Spec{Internet: []string{"b1"}, Sites: []netlab.SiteSpec{
		{Name: "pa", Kind: netlab.Public}, {Name: "pb", Kind: netlab.Public},
	}})
	bh := lab.Internet("b1")
	ha, hb := lab.Site("pa").Hosts[0], lab.Site("pb").Hosts[0]
	addr := netip.AddrPortFrom(bh.Addr, 7000).String()
	state := b.TempDir()
	key := brokerKey(b, state)
	l := newLab(b, []bundle.Broker{{Addr: addr, Key: key}})
	proc, err := bh.Start(brokerBinary(b), "--listen", addr, "--state", state, "--bundle", l.bundleFile, "--relay-rate", "1e12")
	if err != nil {
		b.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); !strings.Contains(proc.Output(), addr+"="); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			b.Fatalf("pvc-broker on b1 printed no identity:\n%s", proc.Output())
		}
	}
	ps := l.peers(b, "p", 2)
	var got atomic.Int64
	var last atomic.Int64 // UnixNano of the last datagram received
	r := newRunner(b)
	ca := l.clientConfig(ps[0])
	ca.Dial = nsDialer(ha)
	cb := l.clientConfig(ps[1])
	cb.Dial = nsDialer(hb)
	cb.OnRelay = func(_ string, d []byte) { got.Add(int64(len(d))); last.Store(time.Now().UnixNano()) }
	a, pb := r.run(ca), r.run(cb)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range []*client.Client{a, pb} {
		if err := c.WaitConnected(ctx, 1); err != nil {
			b.Fatal(err)
		}
	}
	if err := pb.View().Wait(ctx, func(v *client.View) bool { return v.Cert(ps[0].name) != nil }); err != nil {
		b.Fatal(err)
	}

	const size = 1400
	const sendFor = 2 * time.Second
	data := make([]byte, size)
	relayOnce := func() (mbit float64, sent int64) {
		got.Store(0)
		start := time.Now()
		for time.Since(start) < sendFor {
			if a.Relay(ps[1].name, data) != nil {
				time.Sleep(20 * time.Microsecond) // the session's queue is full
				continue
			}
			sent += size
		}
		// Wait until nothing more arrives.
		for n := got.Load(); ; {
			time.Sleep(300 * time.Millisecond)
			if m := got.Load(); m == n {
				break
			} else {
				n = m
			}
		}
		end := time.Unix(0, last.Load())
		return float64(got.Load()) * 8 / end.Sub(start).Seconds() / 1e6, sent
	}
	var tcp, relay, delivered []float64
	for i := range 3 {
		mb, err := netlab.Transfer(ha, hb, hb.Addr, 0, 512<<20)
		if err != nil {
			b.Fatal(err)
		}
		tcp = append(tcp, mb)
		rm, sent := relayOnce()
		relay = append(relay, rm)
		delivered = append(delivered, float64(got.Load())/float64(sent))
		b.Logf("run %d: plain TCP %.0f Mbit/s, relay %.0f Mbit/s (%.1f%% of the datagrams queued were delivered)", i+1, mb, rm, 100*float64(got.Load())/float64(sent))
	}
	mt, mr := median(tcp), median(relay)
	b.ReportMetric(mr, "relay-Mbit/s")
	b.ReportMetric(mt, "tcp-Mbit/s")
	b.ReportMetric(mr/mt, "ratio")
	writeSummary(b, "relay", []summaryRow{
		{"relay_tcp_tls", "Mbit/s", mr, fmt.Sprintf("pa -> pvc-broker on b1 -> pb over the peers' TLS sessions, %d-byte datagrams, %v of sending; median of 3 %v", size, sendFor, round(relay)), ""},
		{"plain_tcp", "Mbit/s", mt, fmt.Sprintf("one TCP stream pa -> pb between the same namespaces (netlab.Transfer, 512 MiB); median of 3 %v", round(tcp)), ""},
		{"ratio", "relay/tcp", mr / mt, "same run, interleaved", ""},
		{"delivered", "fraction", median(delivered), "datagrams delivered / datagrams the client queued (the relay drops when a queue is full)", ""},
	})
}

func round(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(int(x*10+0.5)) / 10
	}
	return out
}
