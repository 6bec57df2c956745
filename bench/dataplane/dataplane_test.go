package dataplane

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
)

// Flags for shorter runs while working on the data plane (`go test
// -bench Dataplane ./bench/dataplane -args -dp.runs 1 -dp.shapes 1gbit
// -dp.lower 4000000 -dp.out /tmp/dp`). The defaults are what `make bench`
// measures and docs/dataplane.md reports.
var (
	// resultsDir is where the CSV files and plots go (relative to this
	// package's directory, where go test runs).
	resultsDir = flag.String("dp.out", "../results/dataplane", "`directory` for the CSV files and plots")
	// runs is the number of NPtcp runs per setup and shape (medians).
	runs       = flag.Int("dp.runs", 3, "NPtcp runs per setup and shape (medians are reported)")
	shapesFlag = flag.String("dp.shapes", "unshaped,1gbit", "comma-separated link shapes to measure: unshaped, 1gbit")
	lowerFlag  = flag.Int("dp.lower", 0, "smallest NPtcp message `size` (0: NetPIPE's default, 1 byte)")
	burstFlag  = flag.Uint64("dp.burst", 0, "tbf burst in `bytes` (0: 1 ms of traffic, see setRate)")
	mtuFlag    = flag.Int("dp.mtu", 0, "inner `MTU` of both overlays (pvcd up --mtu, ip link for wireguard-go); 0: their default, 1420")
	pinFlag    = flag.Bool("dp.pin", false, "pin each measured host's processes (NPtcp, pvcd, wireguard-go) to a CPU of its own: host a to CPU 0, b to CPU 1")
	ccFlag     = flag.String("dp.cc", "", "TCP congestion `control` in the measured hosts (sysctl net.ipv4.tcp_congestion_control); empty: the machine's")
)

// fakePeers is how many idle certified peers are added so that pvcd
// knows 50 (the two other pvcd and these).
const fakePeers = 48

// gbit is the shaped link's rate.
const gbit = 1_000_000_000

// setup is one way of carrying NPtcp between the two hosts.
type setup struct {
	Name string
	Dst  netip.Addr // the receiver's address in this setup
}

// shape is a state of both hosts' links.
type shape struct {
	Name string
	Rate uint64 // 0: unshaped
}

// BenchmarkDataplane measures, in one run on the same two lab hosts,
// NetPIPE throughput and latency for the reference (no overlay), PVC (real
// pvcd) and plain wireguard-go, unshaped and shaped to 1 Gbit/s; the first
// TCP connection to never-contacted peers; pvcd's RSS with 50 peers known
// and after the transfers. It writes bench/results/dataplane/.
func BenchmarkDataplane(b *testing.B) {
	netlab.RequireRoot(b)
	netlab.RequireTools(b, "NPtcp", "wg", "tc")
	bin := b.TempDir()
	if err := buildBinaries(bin); err != nil {
		b.Fatal(err)
	}
	work := b.TempDir()
	l := netlab.New(b, netlab.Spec{Internet: []string{"b1"}, Sites: []netlab.SiteSpec{
		{Name: "a", Kind: netlab.Public}, {Name: "b", Kind: netlab.Public}, {Name: "c", Kind: netlab.Public},
	}})
	ha, hb, hc := l.Site("a").Hosts[0], l.Site("b").Hosts[0], l.Site("c").Hosts[0]
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()

	// PVC: a broker, the master's pvcd on a, enrolled pvcd on b and c.
	c := vcluster.New(l, "bench", bin, work)
	if err := c.StartBroker(l.Internet("b1")); err != nil {
		b.Fatal(err)
	}
	if err := c.Init(); err != nil {
		b.Fatal(err)
	}
	tok, err := c.Token(2)
	if err != nil {
		b.Fatal(err)
	}
	var mtuArgs []string
	if *mtuFlag != 0 {
		mtuArgs = []string{"--mtu", fmt.Sprint(*mtuFlag)}
	}
	for _, h := range []*netlab.Host{ha, hb} {
		if *ccFlag != "" {
			if out, err := h.Run(ctx, "sysctl", "-w", "net.ipv4.tcp_congestion_control="+*ccFlag); err != nil {
				b.Fatalf("-dp.cc %s: %v: %s", *ccFlag, err, out)
			}
		}
		cc, err := h.Run(ctx, "sysctl", "-n", "net.ipv4.tcp_congestion_control")
		if err != nil {
			b.Fatal(err)
		}
		logf(b, "%s: TCP congestion control %s, overlay MTU %d (0: default)", h.Name, strings.TrimSpace(cc), *mtuFlag)
	}
	pa, err := c.Up(ha, "pa", append([]string{"--master-key", c.MasterKey()}, mtuArgs...)...)
	if err != nil {
		b.Fatal(err)
	}
	pb, err := c.Up(hb, "pb", append([]string{"--join", tok}, mtuArgs...)...)
	if err != nil {
		b.Fatal(err)
	}
	pc, err := c.Up(hc, "pc", append([]string{"--join", tok}, mtuArgs...)...)
	if err != nil {
		b.Fatal(err)
	}
	if err := c.WaitPeers(ctx, 30*time.Second); err != nil {
		b.Fatal(err)
	}
	time.Sleep(2 * time.Second) // endpoint records published and spread

	var sum summary
	// First connection to a never-contacted peer: each pair once.
	var pvcConn, pvcAns, refConn []float64
	for i, pair := range [][2]*vcluster.Node{{pa, pb}, {pb, pc}, {pc, pa}} {
		from, to := pair[0], pair[1]
		rc, _, err := firstConnect(from.Host, to.Host, to.Host.Addr, uint16(7100+i))
		if err != nil {
			b.Fatal(err)
		}
		cn, ans, err := firstConnect(from.Host, to.Host, to.Status.VirtualIP, uint16(7200+i))
		if err != nil {
			b.Fatal(err)
		}
		logf(b, "first TCP connection %s -> %s: %v over PVC (first answer %v), %v plain", from.Name, to.Name, cn, ans, rc)
		pvcConn, pvcAns, refConn = append(pvcConn, ms(cn)), append(pvcAns, ms(ans)), append(refConn, ms(rc))
	}
	sum.add(row{Metric: "first TCP connection to a never-contacted peer, PVC (median of 3 pairs)", Value: median(pvcConn), Unit: "ms",
		RefName: "plain TCP", Ref: median(refConn), Target: "≤ 20 ms", Met: yes(median(pvcConn) <= 20)})
	sum.add(row{Metric: "first TCP connection and first answer, PVC", Value: median(pvcAns), Unit: "ms"})

	// pvcd idle with 50 peers known.
	if err := addFakePeers(ctx, c, hc, fakePeers); err != nil {
		b.Fatal(err)
	}
	if err := waitKnown(ctx, pa, 2+fakePeers, 30*time.Second); err != nil {
		b.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	idle, _, err := rss(pa.Proc.PID())
	if err != nil {
		b.Fatal(err)
	}
	sum.add(row{Metric: "pvcd RSS idle, 50 peers known", Value: idle, Unit: "MiB", Target: "≤ 30 MiB", Met: yes(idle <= 30)})

	// Plain wireguard-go on the same two hosts.
	wa, wb := wgAddrs(pa.Status.Subnet)
	na, err := startWG(ha, filepath.Join(bin, "wireguard-go"), "wg"+l.ID+"a", wa)
	if err != nil {
		b.Fatal(err)
	}
	nb, err := startWG(hb, filepath.Join(bin, "wireguard-go"), "wg"+l.ID+"b", wb)
	if err != nil {
		b.Fatal(err)
	}
	if err := na.connect(ctx, nb, work); err != nil {
		b.Fatal(err)
	}
	if err := nb.connect(ctx, na, work); err != nil {
		b.Fatal(err)
	}
	if *pinFlag {
		pinCPU[ha.Name], pinCPU[hb.Name] = 0, 1
		for _, p := range []struct {
			h   *netlab.Host
			pid int
		}{{ha, pa.Proc.PID()}, {hb, pb.Proc.PID()}, {ha, na.proc.PID()}, {hb, nb.proc.PID()}} {
			if err := pinPID(p.h, p.pid); err != nil {
				b.Fatal(err)
			}
		}
		logf(b, "pinned: %s to CPU 0, %s to CPU 1", ha.Name, hb.Name)
	}
	setups := []setup{{"reference", hb.Addr}, {"pvc", pb.Status.VirtualIP}, {"wireguard-go", nb.addr}}
	for _, s := range setups[1:] { // handshakes and paths before measuring
		if _, _, err := firstConnect(ha, hb, s.Dst, 7300); err != nil {
			b.Fatalf("%s: %v", s.Name, err)
		}
	}
	time.Sleep(time.Second)

	var shapes []shape
	for _, sh := range []shape{{"unshaped", 0}, {"1gbit", gbit}} {
		if slices.Contains(strings.Split(*shapesFlag, ","), sh.Name) {
			shapes = append(shapes, sh)
		}
	}
	if len(shapes) == 0 {
		b.Fatalf("-dp.shapes %q: want unshaped, 1gbit or both", *shapesFlag)
	}
	res := map[string]map[string][]point{} // shape -> setup -> median points
	var justAfter float64                  // pvcd's RSS right after its last NPtcp run
	for b.Loop() {
		for _, sh := range shapes {
			if err := setRate(ctx, []*netlab.Host{ha, hb}, sh.Rate); err != nil {
				b.Fatal(err)
			}
			all := map[string][][]point{}
			for r := range *runs {
				for _, s := range setups {
					out := filepath.Join(work, fmt.Sprintf("%s-%s-%d.np", sh.Name, s.Name, r))
					t0 := time.Now()
					before := lossCounters(ctx, ha, hb)
					busy0, total0 := cpuBusy()
					pts, err := netpipe(ha, hb, s.Dst, out)
					if err != nil {
						b.Fatal(err)
					}
					busy1, total1 := cpuBusy()
					logf(b, "%s %s run %d: %.0f Mbit/s at %d B, %.1f us small (%v, CPU %.0f%% busy); %s", sh.Name, s.Name, r+1,
						at(pts, npUpper).Mbps, at(pts, npUpper).Size, smallLatency(pts), time.Since(t0).Round(time.Second),
						100*float64(busy1-busy0)/float64(max(total1-total0, 1)), lossCounters(ctx, ha, hb).since(before))
					all[s.Name] = append(all[s.Name], pts)
					if s.Name == "pvc" {
						justAfter, _, _ = rss(pa.Proc.PID())
					}
				}
			}
			res[sh.Name] = map[string][]point{}
			for name, rs := range all {
				res[sh.Name][name] = medianRuns(rs)
			}
		}
	}
	if err := setRate(ctx, []*netlab.Host{ha, hb}, 0); err != nil {
		b.Fatal(err)
	}
	after, peak, err := rss(pa.Proc.PID())
	if err != nil {
		b.Fatal(err)
	}
	afterB, peakB, _ := rss(pb.Proc.PID())
	wgAfter, wgPeak, _ := rss(na.proc.PID())
	sum.add(row{Metric: "pvcd RSS right after its last transfer (sender)", Value: justAfter, Unit: "MiB"})
	sum.add(row{Metric: "pvcd RSS after the transfers, idle (sender)", Value: after, Unit: "MiB",
		RefName: "wireguard-go (sender)", Ref: wgAfter, Target: "≤ 60 MiB", Met: yes(after <= 60)})
	sum.add(row{Metric: "pvcd RSS after the transfers, idle (receiver)", Value: afterB, Unit: "MiB", Target: "≤ 60 MiB", Met: yes(afterB <= 60)})
	sum.add(row{Metric: "pvcd peak RSS (sender)", Value: peak, Unit: "MiB", RefName: "wireguard-go peak", Ref: wgPeak})
	sum.add(row{Metric: "pvcd peak RSS (receiver)", Value: peakB, Unit: "MiB"})

	// A direct path in doubt copies datagrams to the relay (vnet/bind):
	// during a transfer that halves the link, so say if it happened.
	for _, n := range []*vcluster.Node{pa, pb} {
		var doubts []string
		for _, l := range strings.Split(n.Proc.Output(), "\n") {
			if strings.Contains(l, "direct path in doubt") || strings.Contains(l, "direct path lost") {
				doubts = append(doubts, l)
			}
		}
		logf(b, "pvcd %s: %d direct-path doubts or losses during the benchmark%s", n.Name, len(doubts), strings.Join(append([]string{""}, doubts...), "\n  "))
	}
	sum.figures(res)
	for _, row := range sum.rows {
		logf(b, "%s", row.String())
	}
	if err := writeResults(*resultsDir, res, sum); err != nil {
		b.Fatal(err)
	}
	if s := res["1gbit"]; measured(s) {
		b.ReportMetric(at(s["pvc"], npUpper).Mbps/at(s["reference"], npUpper).Mbps*100, "pvc-%ref-1gbit")
	}
	if u := res["unshaped"]; measured(u) {
		b.ReportMetric(at(u["pvc"], npUpper).Mbps/at(u["wireguard-go"], npUpper).Mbps, "pvc/wg-unshaped")
	}
	b.ReportMetric(median(pvcConn), "first-conn-ms")
	b.ReportMetric(idle, "rss-idle-MiB")
	b.ReportMetric(after, "rss-after-MiB")
}

// setRate shapes (or with rate 0 unshapes) the egress of each host's eth0
// with tbf; shaping both hosts' egress shapes both directions of the link
// between them. The bucket holds 1 ms of traffic (125 kB at 1 Gbit/s), so
// that the shaped veth behaves like a 1 Gbit/s link: with netlab's 4 ms
// the reference's TCP reached 1026-1080 Mbit/s at 4 MB, above what a
// 1 Gbit/s link carries (≈ 949 Mbit/s of TCP payload), because every
// message's first 500 KB left at veth speed; with 1 ms it reaches 937-949.
// Smaller buckets lose tokens to timer delays on this VM (at 64 KiB the
// reference fell to 920 Mbit/s with retransmissions).
func setRate(ctx context.Context, hosts []*netlab.Host, rate uint64) error {
	for _, h := range hosts {
		var err error
		if rate == 0 {
			_, _ = h.Run(ctx, "tc", "qdisc", "del", "dev", "eth0", "root")
			continue
		}
		burst := max(rate/8/1000, 16384)
		if *burstFlag > 0 {
			burst = *burstFlag
		}
		_, err = h.Run(ctx, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
			"rate", strconv.FormatUint(rate, 10)+"bit", "burst", strconv.FormatUint(burst, 10), "latency", "50ms")
		if err != nil {
			return err
		}
	}
	return nil
}

// logf logs to the benchmark and, as it goes, to standard error: go test
// keeps only the end of a benchmark's log.
func logf(b *testing.B, format string, args ...any) {
	b.Helper()
	b.Logf(format, args...)
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
