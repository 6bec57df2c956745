package ttcp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/brokertest"
	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/vnet/ttcp"
)

// listen opens an ordinary TCP listener in h's namespace.
func listen(t testing.TB, h *netlab.Host, port uint16) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(h.Addr, port).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// acceptOne accepts one connection from want (any source when invalid)
// until the deadline.
func acceptOne(ln net.Listener, d time.Duration) <-chan net.Conn {
	ch := make(chan net.Conn, 1)
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(d))
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		ch <- c
	}()
	return ch
}

func TestTraversingTCPHostFirewallOverBroker(t *testing.T) {
	lab := netlab.New(t, netlab.Spec{Sites: []netlab.SiteSpec{
		{Name: "srv", Kind: netlab.HostFW, UDPBlocked: true},
		{Name: "cli", Kind: netlab.Cone},
	}})
	srv, cli := lab.Site("srv").Hosts[0], lab.Site("cli").Hosts[0]
	srvPublic := netip.AddrPortFrom(lab.Site("srv").PublicAddr, 7001)

	// The broker: everything it sends out is recorded.
	var mu sync.Mutex
	var seen []proto.Message
	bl := brokertest.Start(t, brokertest.Options{Hook: func(int) func(proto.Message) proto.Message {
		return func(m proto.Message) proto.Message {
			mu.Lock()
			seen = append(seen, m)
			mu.Unlock()
			return m
		}
	}})
	ctx := brokertest.Ctx(t, 15*time.Second)
	ps, pc := bl.Peer("srv"), bl.Peer("cli")
	descs := make(chan []byte, 4)
	cs := bl.Client(ps, func(c *client.Config) {
		c.OnSignal = func(s client.Signal) {
			if s.Kind == proto.SignalTTCPSYN && s.From == "cli" {
				select {
				case descs <- s.Payload:
				default:
				}
			}
		}
	})
	cc := bl.Client(pc, nil)
	for _, c := range []*client.Client{cs, cc} {
		if err := c.WaitConnected(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := cs.View().Wait(ctx, func(v *client.View) bool { return v.Cert("cli") != nil }); err != nil {
		t.Fatal(err)
	}

	ln := listen(t, srv, 7001)
	// As on most desktops, reverse-path filtering is on (loose) for every
	// interface: the TUN device then needs an address.
	var server *ttcp.Server
	if err := srv.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/rp_filter", []byte("2"), 0o644); err != nil {
			return err
		}
		if s, err := ttcp.NewServer(ttcp.ServerConfig{}); !errors.Is(err, ttcp.ErrUnavailable) {
			if s != nil {
				s.Close()
			}
			return fmt.Errorf("NewServer without an address under rp_filter 2: %v, want ErrUnavailable", err)
		}
		var err error
		server, err = ttcp.NewServer(ttcp.ServerConfig{Addr: netip.MustParsePrefix("240.0.0.77/32")})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	// Without Traversing-TCP the host firewall drops the SYN.
	if err := cli.Do(func() error {
		c, err := net.DialTimeout("tcp4", srvPublic.String(), 1500*time.Millisecond)
		if err == nil {
			c.Close()
			return errors.New("a plain connect crossed the host firewall")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// The server injects every description the broker delivers.
	injected := make(chan error, 1)
	go func() {
		select {
		case b := <-descs:
			s, err := ttcp.ParseSYN(b)
			if err == nil {
				t.Logf("injecting %v", s)
				err = server.Inject(s, netip.AddrPortFrom(srv.Addr, 7001))
			}
			injected <- err
		case <-ctx.Done():
			injected <- ctx.Err()
		}
	}()
	accepted := acceptOne(ln, 15*time.Second)
	var sent []byte
	var conn net.Conn
	start := time.Now()
	d := &ttcp.Dialer{Public: lab.Site("cli").PublicAddr}
	if err := cli.Do(func() error {
		var err error
		conn, err = d.Dial(ctx, srvPublic, func(ctx context.Context, s ttcp.SYN) error {
			b, err := s.Marshal()
			if err != nil {
				return err
			}
			sent = b
			t.Logf("captured %v", s)
			return cc.Signal(ctx, "srv", proto.SignalTTCPSYN, b)
		})
		return err
	}); err != nil {
		for _, cmd := range [][]string{{"iptables", "-L", "-v", "-n"}, {"ip", "-s", "link"}, {"sh", "-c", "grep . /proc/sys/net/ipv4/conf/*/rp_filter; nstat -az | grep -v ' 0 '"}} {
			out, _ := srv.Run(context.Background(), cmd...)
			t.Log(out)
		}
		t.Fatal(err)
	}
	defer conn.Close()
	t.Logf("Traversing-TCP connected in %v (description %d bytes)", time.Since(start).Round(time.Millisecond), len(sent))
	if err := <-injected; err != nil {
		t.Fatal(err)
	}
	sc := <-accepted
	if sc == nil {
		t.Fatal("the server's listener accepted nothing")
	}
	defer sc.Close()
	if got, want := sc.RemoteAddr().(*net.TCPAddr).AddrPort(), conn.LocalAddr().(*net.TCPAddr).AddrPort(); got.Port() != want.Port() || got.Addr() != lab.Site("cli").PublicAddr {
		t.Errorf("accepted from %v, want %v:%d", got, lab.Site("cli").PublicAddr, want.Port())
	}
	if err := netlab.Exchange(conn, sc, 1<<20); err != nil {
		t.Fatal(err)
	}

	// Nothing is left behind: the client's rules went when Dial returned,
	// the server's rules and device go with Close.
	if err := server.Close(); err != nil {
		t.Error(err)
	}
	for _, h := range []*netlab.Host{cli, srv} {
		out, err := h.Run(context.Background(), "sh", "-c", "iptables-save; ip -o link")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "pvc-ttcp") || strings.Contains(out, ttcp.DefaultTUN) {
			t.Errorf("%s: left behind:\n%s", h.Name, out)
		}
	}

	// The broker relayed the description and nothing else of this flow.
	mu.Lock()
	defer mu.Unlock()
	n := 0
	for _, m := range seen {
		switch m := m.(type) {
		case *proto.Signal:
			if m.Kind == proto.SignalTTCPSYN {
				n++
				if !bytes.Equal(m.Payload, sent) {
					t.Errorf("broker forwarded a description %x, want %x", m.Payload, sent)
				}
			}
		case *proto.Relay:
			t.Errorf("broker relayed data from %s to %s", m.From, m.To)
		}
	}
	if n != 1 {
		t.Errorf("broker forwarded %d descriptions, want 1", n)
	}
}
