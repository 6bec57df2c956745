package traversalbench

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
	"github.com/pvc-project/pvc/internal/plot"
)

var bin string

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		os.Exit(m.Run()) // no benchmark asked for (go test ./...): nothing to build
	}
	vcluster.Main(m, &bin)
}

// technique is one measured pair: from the site named from to the site
// named to, whose path must become want.
type technique struct {
	want     string
	from, to string
	paths    string // --paths for both pvcd ("": all)
}

var techniques = []technique{
	{"direct", "ca", "pub", ""},
	{"upnp", "cb", "up", ""},
	{"punched", "cc", "cd", ""},
	{"ttcp", "ua", "hf", ""},
	{"tcp-punch", "ub", "uc", "tcp,tcp-punch"},
	{"relay", "sa", "sb", ""},
}

const delay = 5 * time.Millisecond // each way on every site's link: 20 ms site to site

type sample struct {
	connect, path time.Duration
	err           error
}

func BenchmarkFirstConnection(b *testing.B) {
	shape := netlab.Shape{Delay: delay}
	spec := netlab.Spec{Internet: []string{"b1"}, Sites: []netlab.SiteSpec{
		{Name: "mast", Kind: netlab.Public},
		{Name: "pub", Kind: netlab.Public, Shape: shape},
		{Name: "ca", Kind: netlab.Cone, Shape: shape},
		{Name: "cb", Kind: netlab.Cone, Shape: shape},
		{Name: "up", Kind: netlab.UPnP, Shape: shape},
		{Name: "cc", Kind: netlab.Cone, Shape: shape},
		{Name: "cd", Kind: netlab.Cone, Shape: shape},
		{Name: "ua", Kind: netlab.UDPBlocked, Shape: shape},
		{Name: "hf", Kind: netlab.HostFW, UDPBlocked: true, Shape: shape},
		{Name: "ub", Kind: netlab.UDPBlocked, Shape: shape},
		{Name: "uc", Kind: netlab.UDPBlocked, Shape: shape},
		{Name: "sa", Kind: netlab.Symmetric, Shape: shape},
		{Name: "sb", Kind: netlab.Symmetric, Shape: shape},
	}}
	l := netlab.New(b, spec)
	c := vcluster.NewT(b, l, "lab", bin)
	if err := c.StartBroker(l.Internet("b1")); err != nil {
		b.Fatal(err)
	}
	if err := c.Init(); err != nil {
		b.Fatal(err)
	}
	tok, err := c.Token(len(spec.Sites))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Up(l.Site("mast").Hosts[0], "master", "--master-key", c.MasterKey()); err != nil {
		b.Fatal(err)
	}
	up := func(site, paths string) *vcluster.Node {
		args := []string{"--join", tok}
		if paths != "" {
			args = append(args, "--paths", paths)
		}
		n, err := c.Up(l.Site(site).Hosts[0], site, args...)
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	nodes := map[string]*vcluster.Node{}
	for _, t := range techniques {
		nodes[t.from], nodes[t.to] = up(t.from, t.paths), up(t.to, t.paths)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitPeers(ctx, 40*time.Second); err != nil {
		b.Fatal(err)
	}

	// The relay round trip, the reference of the connect target: a TCP
	// connect over the relay between the symmetric sites once their
	// WireGuard session exists.
	relayRTT := relayRoundTrip(b, nodes["sa"], nodes["sb"])
	b.Logf("relay round trip (TCP connect over the relay, session warm): %v", relayRTT)

	const runs = 3
	results := map[string][]sample{}
	for i := 0; i < runs; i++ {
		if i > 0 { // fresh peers: restart both pvcd of every pair
			for _, t := range techniques {
				for _, s := range []string{t.from, t.to} {
					if err := nodes[s].Proc.Stop(5 * time.Second); err != nil {
						b.Logf("stop %s: %v", s, err)
					}
				}
			}
			for _, t := range techniques {
				nodes[t.from], nodes[t.to] = up(t.from, t.paths), up(t.to, t.paths)
			}
			if err := c.WaitPeers(ctx, 40*time.Second); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(3 * time.Second) // endpoint records published and fetched
		// One pair at a time: the others are idle meanwhile.
		for _, t := range techniques {
			results[t.want] = append(results[t.want], measure(nodes[t.from], nodes[t.to], t.want))
		}
	}

	var rows [][]string
	var xs, conn, path []float64
	for i, t := range techniques {
		var cs, ps []time.Duration
		for j, s := range results[t.want] {
			if s.err != nil {
				b.Errorf("%s: run %d: %v", t.want, j+1, s.err)
				continue
			}
			cs, ps = append(cs, s.connect), append(ps, s.path)
			rows = append(rows, []string{t.want, strconv.Itoa(j + 1), ms(s.connect), ms(s.path), ms(relayRTT)})
		}
		if len(cs) == 0 {
			continue
		}
		mc, mp := median(cs), median(ps)
		b.ReportMetric(float64(mc.Microseconds())/1000, t.want+"-connect-ms")
		b.ReportMetric(float64(mp.Microseconds())/1000, t.want+"-path-ms")
		b.Logf("%-9s connect %v (target ≤ relay RTT + 10 ms = %v), path %v (target ≤ 1 s)", t.want, mc, relayRTT+10*time.Millisecond, mp)
		xs, conn, path = append(xs, float64(i+1)), append(conn, float64(mc.Microseconds())/1000), append(path, float64(mp.Microseconds())/1000)
	}
	b.ReportMetric(float64(relayRTT.Microseconds())/1000, "relay-rtt-ms")
	dir := filepath.Join("..", "results", "traversal")
	if err := plot.WriteCSV(filepath.Join(dir, "first-connection.csv"), []string{"technique", "run", "connect_ms", "path_ms", "relay_rtt_ms"}, rows); err != nil {
		b.Error(err)
	}
	_ = xs
	_ = conn
	_ = path
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64)
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// listen starts a TCP listener in the target host that accepts and closes.
func listen(to *vcluster.Node) (net.Listener, uint16, error) {
	var ln net.Listener
	err := to.Host.Do(func() (err error) { ln, err = net.Listen("tcp4", ":0"); return })
	if err != nil {
		return nil, 0, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln, uint16(ln.Addr().(*net.TCPAddr).Port), nil
}

// measure connects from → to over the overlay (the first packet to a peer
// it never contacted) and waits for the path to become want.
func measure(from, to *vcluster.Node, want string) sample {
	ln, port, err := listen(to)
	if err != nil {
		return sample{err: err}
	}
	defer ln.Close()
	dst := netip.AddrPortFrom(to.Status.VirtualIP, port).String()
	var conn net.Conn
	start := time.Now()
	err = from.Host.Do(func() (err error) { conn, err = net.DialTimeout("tcp4", dst, 10*time.Second); return })
	s := sample{connect: time.Since(start)}
	if err != nil {
		s.err = fmt.Errorf("connect: %w", err)
		return s
	}
	conn.Close()
	deadline := start.Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		p, err := from.Peer(ctx, to.Name)
		cancel()
		if err == nil && p.Path == want {
			s.path = time.Since(start)
			return s
		}
		time.Sleep(5 * time.Millisecond)
	}
	p, _ := from.Peer(context.Background(), to.Name)
	s.err = fmt.Errorf("path %q after 20 s, want %q (why: %s)", p.Path, want, p.Why)
	return s
}

// relayRoundTrip returns the median time of TCP connects from a to b once
// their session exists and their path is the relay.
func relayRoundTrip(b *testing.B, a, z *vcluster.Node) time.Duration {
	b.Helper()
	ln, port, err := listen(z)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	dst := netip.AddrPortFrom(z.Status.VirtualIP, port).String()
	var ds []time.Duration
	for i := 0; i < 6; i++ {
		var conn net.Conn
		start := time.Now()
		if err := a.Host.Do(func() (err error) { conn, err = net.DialTimeout("tcp4", dst, 10*time.Second); return }); err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		conn.Close()
		if i > 0 { // the first one includes the WireGuard handshake
			ds = append(ds, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return median(ds)
}
