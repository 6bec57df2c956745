package filter

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/pvc-project/pvc/security/policy"
	"golang.zx2c4.com/wireguard/tun"
)

// loopTUN is a tun.Device for benchmarks: Read copies a fixed batch of
// packets into the caller's buffers (as a kernel read copies), Write drops
// everything.
type loopTUN struct{ pkts [][]byte }

func (d *loopTUN) File() *os.File { return nil }
func (d *loopTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := min(len(bufs), len(d.pkts))
	for i := 0; i < n; i++ {
		sizes[i] = copy(bufs[i][offset:], d.pkts[i])
	}
	return n, nil
}
func (d *loopTUN) Write(bufs [][]byte, offset int) (int, error) { return len(bufs), nil }
func (d *loopTUN) MTU() (int, error)                            { return 1420, nil }
func (d *loopTUN) Name() (string, error)                        { return "loop0", nil }
func (d *loopTUN) Events() <-chan tun.Event                     { return nil }
func (d *loopTUN) Close() error                                 { return nil }
func (d *loopTUN) BatchSize() int                               { return 128 }

const benchBatch = 128

func benchFilter(b *testing.B, dev tun.Device) *Filter {
	peers := &peerSet{m: map[netip.Addr]policy.Peer{
		netip.MustParseAddr(w1IP): {Name: "w1", Groups: []string{"workers"}, Underlay: netip.MustParseAddr("192.0.2.7")},
	}}
	g := "default deny\nallow from group:head to any proto tcp port 5001\nallow from any to group:head proto udp\n"
	f, err := New(dev, Config{Engine: engine(b, g, "domain 192.0.2.0/24\noutside inbound deny\n"), Peers: peers, LocalIP: netip.MustParseAddr(selfIP)})
	if err != nil {
		b.Fatal(err)
	}
	return f
}

func batchBufs() ([][]byte, []int) {
	bufs := make([][]byte, benchBatch)
	for i := range bufs {
		bufs[i] = make([]byte, 32+1500)
	}
	return bufs, make([]int, benchBatch)
}

// establish opens the TCP flow selfIP:40000 -> w1:5001 through f.
func establish(b *testing.B, f *Filter) {
	var acc accum
	if !f.check(tcpPkt(selfIP, 40000, w1IP, 5001, syn, 0), policy.Outbound, f.clock(), &acc) ||
		!f.check(tcpPkt(w1IP, 5001, selfIP, 40000, synack, 0), policy.Inbound, f.clock(), &acc) {
		b.Fatal("flow not allowed")
	}
}

func bulk(n int) [][]byte {
	pkts := make([][]byte, n)
	for i := range pkts {
		pkts[i] = tcpPkt(selfIP, 40000, w1IP, 5001, ack, 1400-40)
	}
	return pkts
}

// BenchmarkReadEstablished: outbound packets of an established flow,
// batches of 128 through Read.
func BenchmarkReadEstablished(b *testing.B) {
	dev := &loopTUN{pkts: bulk(benchBatch)}
	f := benchFilter(b, dev)
	establish(b, f)
	bufs, sizes := batchBufs()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if n, _ := f.Read(bufs, sizes, 32); n != benchBatch {
			b.Fatalf("read %d", n)
		}
	}
	perPacket(b, benchBatch)
}

// BenchmarkWriteEstablished: inbound packets of an established flow,
// batches of 128 through Write (the inner Write does nothing).
func BenchmarkWriteEstablished(b *testing.B) {
	f := benchFilter(b, &loopTUN{})
	establish(b, f)
	pkt := tcpPkt(w1IP, 5001, selfIP, 40000, ack, 1400-40)
	bufs := make([][]byte, benchBatch)
	for i := range bufs {
		bufs[i] = append(make([]byte, 32), pkt...)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if n, _ := f.Write(bufs, 32); n != benchBatch {
			b.Fatalf("wrote %d", n)
		}
	}
	perPacket(b, benchBatch)
}

// BenchmarkNewFlow: the first packet of a new inbound UDP flow (peer
// lookup, policy decision, table insert), one packet per Write. The table
// is flushed (untimed) before it fills.
func BenchmarkNewFlow(b *testing.B) {
	f := benchFilter(b, &loopTUN{})
	pkt := append(make([]byte, 32), udpPkt(w1IP, 1, selfIP, 9, 100)...)
	bufs := [][]byte{pkt}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if i%32768 == 0 {
			b.StopTimer()
			f.Flush()
			b.StartTimer()
		}
		// a new source port each time (the UDP checksum is not checked)
		pkt[32+20], pkt[32+21] = byte(i>>8), byte(i)
		pkt[32+22] = byte(i >> 16)
		f.Write(bufs, 32)
	}
	if st := f.Stats(); st.UnknownPeer+st.Malformed != 0 || rule(st, true, policy.LayerGlobal, 1).Flows == 0 {
		b.Fatalf("flows not allowed: %+v", st)
	}
}

// BenchmarkThroughput reads 1400-byte packets of an established flow in
// batches of 128 from the bare fake device and through the Filter, in the
// same run, and reports both rates and their ratio.
func BenchmarkThroughput(b *testing.B) {
	dev := &loopTUN{pkts: bulk(benchBatch)}
	f := benchFilter(b, dev)
	establish(b, f)
	bufs, sizes := batchBufs()
	var bare, filtered time.Duration
	for b.Loop() {
		t0 := time.Now()
		dev.Read(bufs, sizes, 32)
		t1 := time.Now()
		f.Read(bufs, sizes, 32)
		t2 := time.Now()
		bare += t1.Sub(t0)
		filtered += t2.Sub(t1)
	}
	bits := float64(b.N) * benchBatch * 1400 * 8
	b.ReportMetric(bits/bare.Seconds()/1e9, "bare-Gbit/s")
	b.ReportMetric(bits/filtered.Seconds()/1e9, "filter-Gbit/s")
	b.ReportMetric(float64(filtered-bare)/float64(b.N)/benchBatch, "added-ns/pkt")
	b.ReportMetric(bare.Seconds()/filtered.Seconds(), "ratio")
}

func perPacket(b *testing.B, n int) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/pkt")
}
