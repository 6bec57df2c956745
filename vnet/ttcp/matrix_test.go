package ttcp_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/brokertest"
	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/vnet/ttcp"
)

// matrixKinds are the site kinds the crossing matrix measures: all of
// LAB.md's.
var matrixKinds = netlab.Kinds

// openTTL is the TTL of the server's opening SYN: enough to leave its own
// routers.
func openTTL(k netlab.Kind) uint8 {
	switch k {
	case netlab.Public, netlab.HostFW:
		return 1
	case netlab.DoubleNAT:
		return 3
	}
	return 2
}

// ttcpOnce runs one Traversing-TCP connection from cli to a listener on srv
// at port, the description handed over in-process (Marshal, ParseSYN), and
// exchanges checked data. It returns how long Dial took.
func ttcpOnce(ctx context.Context, srv *netlab.Host, server *ttcp.Server, srvPublic netip.Addr, cli *netlab.Host, d *ttcp.Dialer, port uint16) (time.Duration, error) {
	var ln net.Listener
	if err := srv.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(srv.Addr, port).String())
		return err
	}); err != nil {
		return 0, err
	}
	defer ln.Close()
	accepted := acceptOne(ln, 6*time.Second)
	var conn net.Conn
	start := time.Now()
	err := cli.Do(func() error {
		var err error
		conn, err = d.Dial(ctx, netip.AddrPortFrom(srvPublic, port), func(ctx context.Context, s ttcp.SYN) error {
			b, err := s.Marshal()
			if err != nil {
				return err
			}
			s, err = ttcp.ParseSYN(b)
			if err != nil {
				return err
			}
			return server.Inject(s, netip.AddrPortFrom(srv.Addr, port))
		})
		return err
	})
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	defer conn.Close()
	sc := <-accepted
	if sc == nil {
		return took, errors.New("client connected, server accepted nothing")
	}
	defer sc.Close()
	return took, netlab.Exchange(conn, sc, 64<<10)
}

// BenchmarkTraversingTCPMatrix measures which (server, client) site kinds
// Traversing-TCP crosses, with and without the server's low-TTL opening
// SYN, and checks the result against ttcp.Crosses. It builds 16 sites and
// runs 128 connections (about two minutes): `make bench` runs it (a measurement: the NAT-matrix test of e2e/traversal is the check that runs in CI).
func BenchmarkTraversingTCPMatrix(bm *testing.B) {
	var t testing.TB = bm
	var sites []netlab.SiteSpec
	for _, k := range matrixKinds {
		name := siteName(k)
		sites = append(sites, netlab.SiteSpec{Name: name + "a", Kind: k}, netlab.SiteSpec{Name: name + "b", Kind: k})
	}
	lab := netlab.New(t, netlab.Spec{Sites: sites})
	name := func(k netlab.Kind, ab string) string { return siteName(k) + ab }

	// Servers: the "a" site of every kind, with and without the opening SYN.
	type srvSide struct {
		host   *netlab.Host
		public netip.Addr
		plain  *ttcp.Server
		open   *ttcp.Server
	}
	srvs := map[netlab.Kind]*srvSide{}
	dialers := map[netlab.Kind]*ttcp.Dialer{}
	for _, k := range matrixKinds {
		s := lab.Site(name(k, "a"))
		ss := &srvSide{host: s.Hosts[0], public: s.PublicAddr}
		if err := ss.host.Do(func() error {
			var err error
			if ss.plain, err = ttcp.NewServer(ttcp.ServerConfig{TUN: "pvcttcp0"}); err != nil {
				return err
			}
			ss.open, err = ttcp.NewServer(ttcp.ServerConfig{TUN: "pvcttcp1", OpenTTL: openTTL(k)})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer ss.plain.Close()
		defer ss.open.Close()
		srvs[k] = ss
		dialers[k] = &ttcp.Dialer{Public: lab.Site(name(k, "b")).PublicAddr}
	}

	type cell struct {
		took time.Duration
		err  error
	}
	results := map[[3]string]cell{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	port := uint16(7400)
	for _, sk := range matrixKinds {
		for _, ck := range matrixKinds {
			for _, open := range []bool{false, true} {
				port++
				wg.Add(1)
				go func(sk, ck netlab.Kind, open bool, port uint16) {
					defer wg.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					ss := srvs[sk]
					server := ss.plain
					if open {
						server = ss.open
					}
					ctx, cancel := context.WithTimeout(t.Context(), 4*time.Second)
					defer cancel()
					took, err := ttcpOnce(ctx, ss.host, server, ss.public, lab.Site(name(ck, "b")).Hosts[0], dialers[ck], port)
					mu.Lock()
					results[[3]string{string(sk), string(ck), fmt.Sprint(open)}] = cell{took, err}
					mu.Unlock()
				}(sk, ck, open, port)
			}
		}
	}
	wg.Wait()

	var b strings.Builder
	fmt.Fprintf(&b, "\nTraversing-TCP: rows server kind, columns client kind; each cell plain / with opening SYN\n%-11s", "")
	for _, ck := range matrixKinds {
		fmt.Fprintf(&b, " %-17s", ck)
	}
	b.WriteString("\n")
	for _, sk := range matrixKinds {
		fmt.Fprintf(&b, "%-11s", sk)
		for _, ck := range matrixKinds {
			var parts []string
			for _, open := range []bool{false, true} {
				c := results[[3]string{string(sk), string(ck), fmt.Sprint(open)}]
				got := c.err == nil
				s := "no"
				if got {
					s = fmt.Sprintf("%dms", c.took.Milliseconds())
				}
				if want := ttcp.Crosses(string(sk), string(ck), open); got != want {
					s += "!"
					t.Errorf("server %s, client %s, opening SYN %v: crossed %v, Crosses says %v (%v)", sk, ck, open, got, want, c.err)
				}
				parts = append(parts, s)
			}
			fmt.Fprintf(&b, " %-17s", strings.Join(parts, " / "))
		}
		b.WriteString("\n")
	}
	t.Log(b.String())
}

// TestTraversingTCPBehindNATWithOpeningSYN: a server behind a NAT router
// (udp-blocked cone) is out of reach of plain Traversing-TCP (its router
// neither translates nor lets through the SYN/ACK to a SYN it never saw)
// and reachable when it opens its router's state with a low-TTL SYN.
func TestTraversingTCPBehindNATWithOpeningSYN(t *testing.T) {
	lab := netlab.New(t, netlab.Spec{Sites: []netlab.SiteSpec{
		{Name: "srv", Kind: netlab.UDPBlocked},
		{Name: "cli", Kind: netlab.Cone},
	}})
	srv, cli := lab.Site("srv").Hosts[0], lab.Site("cli").Hosts[0]
	before := runtime.NumGoroutine()
	var plain, open *ttcp.Server
	if err := srv.Do(func() error {
		var err error
		if plain, err = ttcp.NewServer(ttcp.ServerConfig{TUN: "pvcttcp0"}); err != nil {
			return err
		}
		open, err = ttcp.NewServer(ttcp.ServerConfig{TUN: "pvcttcp1", OpenTTL: 2})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	defer open.Close()
	d := &ttcp.Dialer{Public: lab.Site("cli").PublicAddr}
	ctx, cancel := context.WithTimeout(t.Context(), 2500*time.Millisecond)
	defer cancel()
	if _, err := ttcpOnce(ctx, srv, plain, lab.Site("srv").PublicAddr, cli, d, 7001); err == nil {
		t.Error("plain Traversing-TCP crossed a NAT router")
	}
	ctx, cancel = context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	took, err := ttcpOnce(ctx, srv, open, lab.Site("srv").PublicAddr, cli, d, 7002)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("connected in %v with the opening SYN", took.Round(time.Millisecond))
	if want := ttcp.Crosses("udp-blocked", "cone", true) && !ttcp.Crosses("udp-blocked", "cone", false); !want {
		t.Error("Crosses disagrees with this test")
	}
	// Every goroutine of the dials and servers ends with them, and so do
	// their rules, also those of the dial that failed.
	if err := errors.Join(plain.Close(), open.Close()); err != nil {
		t.Error(err)
	}
	brokertest.CheckGoroutines(t, before)
	for _, h := range []*netlab.Host{cli, srv} {
		out, err := h.Run(context.Background(), "sh", "-c", "iptables-save; ip -o link")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "pvc-ttcp") || strings.Contains(out, "pvcttcp") {
			t.Errorf("%s: left behind:\n%s", h.Name, out)
		}
	}
}

// TestServerLifecycle: Close is idempotent and removes the device, Inject
// refuses after Close and refuses bad endpoints before, and a second
// Server with the same device name in the same namespace fails cleanly.
func TestServerLifecycle(t *testing.T) {
	lab := netlab.New(t, netlab.Spec{Sites: []netlab.SiteSpec{{Name: "p", Kind: netlab.Public}}})
	h := lab.Site("p").Hosts[0]
	var s *ttcp.Server
	if err := h.Do(func() error {
		var err error
		if s, err = ttcp.NewServer(ttcp.ServerConfig{OpenTTL: 2}); err != nil {
			return err
		}
		if s2, err := ttcp.NewServer(ttcp.ServerConfig{}); err == nil {
			s2.Close()
			return errors.New("a second server with the same TUN name was created")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	syn := ttcp.SYN{Src: netip.MustParseAddrPort("203.0.113.50:40000"), Dst: netip.AddrPortFrom(h.Addr, 7001), WScale: -1}
	if err := s.Inject(syn, netip.AddrPortFrom(h.Addr, 0)); err == nil {
		t.Error("Inject accepted local port 0")
	}
	if err := s.Inject(ttcp.SYN{}, netip.AddrPortFrom(h.Addr, 7001)); !errors.Is(err, ttcp.ErrBadSYN) {
		t.Errorf("Inject of an empty description: %v", err)
	}
	if err := s.Inject(syn, netip.AddrPortFrom(h.Addr, 7001)); err != nil {
		t.Error(err)
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Inject(syn, netip.AddrPortFrom(h.Addr, 7001)); !errors.Is(err, ttcp.ErrClosed) {
		t.Errorf("Inject after Close: %v", err)
	}
	out, err := h.Run(context.Background(), "sh", "-c", "iptables-save; ip -o link")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "pvc-ttcp") || strings.Contains(out, ttcp.DefaultTUN) {
		t.Errorf("left behind:\n%s", out)
	}
}

// siteName is a short site name for a kind (site names have at most 10
// characters); the matrix adds "a" or "b".
func siteName(k netlab.Kind) string {
	return map[netlab.Kind]string{
		netlab.Public: "pub", netlab.HostFW: "hfw", netlab.Firewall: "fw", netlab.Cone: "cone",
		netlab.Symmetric: "sym", netlab.UDPBlocked: "ub", netlab.UPnP: "upnp", netlab.DoubleNAT: "dnat",
	}[k]
}

// TestRemoveStale: the rules a killed process left (comments starting with
// pvc-ttcp, in raw, mangle and filter) are deleted; others are kept.
func TestRemoveStale(t *testing.T) {
	lab := netlab.New(t, netlab.Spec{Sites: []netlab.SiteSpec{{Name: "p", Kind: netlab.Public}}})
	h := lab.Site("p").Hosts[0]
	ctx := context.Background()
	for _, args := range [][]string{
		{"-t", "raw", "-I", "OUTPUT", "-p", "tcp", "--dport", "7001", "-m", "comment", "--comment", "pvc-ttcp opening SYN", "-j", "CT", "--notrack"},
		{"-t", "mangle", "-I", "PREROUTING", "-p", "tcp", "-m", "comment", "--comment", "pvc-ttcp injected flow", "-j", "ACCEPT"},
		{"-t", "filter", "-I", "INPUT", "-p", "tcp", "--syn", "-m", "comment", "--comment", "pvc-ttcp injected SYN", "-j", "ACCEPT"},
		{"-t", "filter", "-I", "INPUT", "-p", "tcp", "--dport", "22", "-m", "comment", "--comment", "the admin rule", "-j", "ACCEPT"},
	} {
		if out, err := h.Run(ctx, append([]string{"iptables"}, args...)...); err != nil {
			t.Fatalf("iptables %v: %v\n%s", args, err, out)
		}
	}
	var n int
	if err := h.Do(func() (err error) { n, err = ttcp.RemoveStale(""); return }); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("removed %d rules, want 3", n)
	}
	out, err := h.Run(ctx, "iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "pvc-ttcp") || !strings.Contains(out, "the admin rule") {
		t.Errorf("after RemoveStale:\n%s", out)
	}
	if err := h.Do(func() (err error) { n, err = ttcp.RemoveStale(""); return }); err != nil || n != 0 {
		t.Errorf("second RemoveStale: %d, %v", n, err)
	}
}
