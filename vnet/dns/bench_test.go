package dns

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
)

// discard is a ResponseWriter that packs the reply into a reused buffer,
// as the server does, and drops it.
type discard struct {
	recorder
	buf []byte
}

func (d *discard) WriteMsg(m *mdns.Msg) error {
	var err error
	d.buf, err = m.PackBuffer(d.buf)
	return err
}

func (d *discard) RemoteAddr() net.Addr { return nil }

// BenchmarkHandler measures queries per second and allocations per query
// of the handler alone (no sockets), reply packing included, with 1,000
// peers. The reference case is miekg/dns's own minimal work for a query:
// building and packing a reply with no records.
func BenchmarkHandler(b *testing.B) {
	d := NewMemDirectory()
	var ps []Peer
	for i := range 1000 {
		ps = append(ps, Peer{fmt.Sprintf("node%d", i), netip.AddrFrom4([4]byte{240, 1, byte(i >> 8), byte(i)})})
	}
	if err := d.Replace(ps); err != nil {
		b.Fatal(err)
	}
	h := testHandler(b, d)
	cases := []struct {
		name string
		q    *mdns.Msg
	}{
		{"A", query("node500.mycluster.pvc.", mdns.TypeA)},
		{"A-mixed-case", query("Node500.MyCluster.pvc.", mdns.TypeA)},
		{"PTR", query("244.1.1.240.in-addr.arpa.", mdns.TypePTR)},
		{"NXDOMAIN", query("nobody.mycluster.pvc.", mdns.TypeA)},
		{"REFUSED", query("example.com.", mdns.TypeA)},
	}
	b.Run("reference-empty-reply", func(b *testing.B) {
		w := &discard{}
		q := cases[0].q
		b.ReportAllocs()
		for b.Loop() {
			m := new(mdns.Msg)
			m.SetReply(q)
			if err := w.WriteMsg(m); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
	})
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			w := &discard{}
			b.ReportAllocs()
			for b.Loop() {
				h.ServeDNS(w, c.q)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
		})
	}
}
