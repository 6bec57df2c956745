package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/pvc-project/pvc/broker/brokertest"
	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/server"
	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
)

// nsDialer opens the client's sockets inside a lab host's namespace.
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

// stunFrom sends a STUN binding request from h to addr and returns the
// mapped address, or an error after timeout.
func stunFrom(h *netlab.Host, addr string, timeout time.Duration) (netip.AddrPort, error) {
	c, err := netlab.UDPSocket(h, 0)
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	dst, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	buf := make([]byte, 1500)
	for end := time.Now().Add(timeout); time.Now().Before(end); {
		if _, err := c.WriteTo(req.Raw, dst); err != nil {
			return netip.AddrPort{}, err
		}
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			continue
		}
		resp := &stun.Message{Raw: buf[:n]}
		var xor stun.XORMappedAddress
		if resp.Decode() == nil && resp.TransactionID == req.TransactionID && xor.GetFrom(resp) == nil {
			a, _ := netip.AddrFromSlice(xor.IP)
			return netip.AddrPortFrom(a.Unmap(), uint16(xor.Port)), nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("no STUN answer from %s within %v", addr, timeout)
}

// TestRelayLabUDPBlockedAndCone: in the network lab, a peer at a site that
// drops all UDP and a peer behind a cone NAT relay WireGuard-sized
// datagrams to each other through a broker on an Internet host, over their
// TLS sessions (and, second, with the cone peer on the UDP relay, which the
// broker bridges to the other's session). The test first shows that UDP
// really is blocked at the one site and open at the other: a STUN request
// to the broker gets no answer from the first and an answer with the NAT's
// public address from the second; the blocked peer's client never gets
// its UDP relay path confirmed.
func TestRelayLabUDPBlockedAndCone(t *testing.T) {
	lab := netlab.New(t, netlab.Spec{Internet: []string{"b1"}, Sites: []netlab.SiteSpec{
		{Name: "ub", Kind: netlab.UDPBlocked},
		{Name: "cone", Kind: netlab.Cone},
	}})
	ctx := brokertest.Ctx(t, time.Minute)
	bh := lab.Internet("b1")
	ubSite, coneSite := lab.Site("ub"), lab.Site("cone")
	ubHost, coneHost := ubSite.Hosts[0], coneSite.Hosts[0]
	addr := netip.AddrPortFrom(bh.Addr, 7000).String()

	// The broker: the real server, its sockets in b1's namespace.
	state := t.TempDir()
	key, _, err := server.LoadOrCreateKey(state)
	if err != nil {
		t.Fatal(err)
	}
	m, err := master.Init(t.TempDir(), "lab", master.InitOptions{Brokers: []bundle.Broker{{Addr: addr, Key: key.Public().(ed25519.PublicKey)}}})
	if err != nil {
		t.Fatal(err)
	}
	log := &brokertest.Buffer{}
	srv, err := server.New(server.Config{StateDir: state, Bundles: [][]byte{m.Bundle().Encode()},
		Logger: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var ls server.Listeners
	if err := bh.Do(func() error {
		var err error
		if ls.TCP, err = net.Listen("tcp4", addr); err != nil {
			return err
		}
		ls.UDP, err = net.ListenPacket("udp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, ls) }()
	t.Cleanup(func() {
		stop()
		if err := <-served; err != nil {
			t.Error(err)
		}
	})

	// UDP is blocked at one site and open at the other.
	if got, err := stunFrom(ubHost, addr, 1500*time.Millisecond); err == nil {
		t.Fatalf("STUN from the udp-blocked site got an answer (%v): UDP is not blocked", got)
	}
	if got, err := stunFrom(coneHost, addr, 5*time.Second); err != nil {
		t.Fatalf("STUN from the cone site: %v", err)
	} else if got.Addr() != coneSite.PublicAddr {
		t.Errorf("STUN from the cone site: mapped %v, want the NAT's address %v", got, coneSite.PublicAddr)
	}

	peer := func(name string) (*brokertest.Peer, []byte) {
		sk, _ := keys.NewSigning()
		wg, _ := keys.NewWG()
		c, err := m.Issue(master.CertOptions{Name: name, WGKey: wg.Public(), SignKey: sk.Public().(ed25519.PublicKey)})
		if err != nil {
			t.Fatal(err)
		}
		return &brokertest.Peer{Name: name, Cert: c, Key: sk, WG: wg}, c.Encode()
	}
	ub, ubCert := peer("ub")
	cone, coneCert := peer("cone")

	for _, tc := range []struct {
		name    string
		coneUDP bool
		coneVia string
	}{{"tls-both", false, "TLS"}, {"tls-and-udp", true, "UDP"}} {
		t.Run(tc.name, func(t *testing.T) {
			cctx, cancel := context.WithCancel(ctx)
			got := map[string]chan []byte{"ub": make(chan []byte, 256), "cone": make(chan []byte, 256)}
			start := func(p *brokertest.Peer, raw []byte, h *netlab.Host, udp bool) (*client.Client, chan error) {
				c, err := client.New(client.Config{Bundle: m.Bundle(), Cert: raw, Key: p.Key, UDP: udp, Dial: nsDialer(h),
					Retry: 100 * time.Millisecond, OnRelay: func(from string, d []byte) {
						select {
						case got[p.Name] <- append([]byte(from+":"), d...):
						default:
						}
					}})
				if err != nil {
					t.Fatal(err)
				}
				done := make(chan error, 1)
				go func() { done <- c.Run(cctx) }()
				return c, done
			}
			cu, du := start(ub, ubCert, ubHost, true) // tries UDP; it is blocked
			cc, dc := start(cone, coneCert, coneHost, tc.coneUDP)
			defer func() { cancel(); <-du; <-dc }()
			waitBoth(ctx, t, cu, cc, 1, "ub", "cone")
			for c, site := range map[*client.Client]*netlab.Site{cu: ubSite, cc: coneSite} {
				for _, o := range c.Observed() {
					if o.Addr() != site.PublicAddr {
						t.Errorf("broker observed %s's session from %v, want its NAT's address %v", c.Name(), o, site.PublicAddr)
					}
				}
			}
			if tc.coneUDP {
				for end := time.Now().Add(10 * time.Second); !cc.RelayOverUDP(); time.Sleep(20 * time.Millisecond) {
					if time.Now().After(end) {
						t.Fatal("the cone peer's UDP relay path was never confirmed")
					}
				}
			}
			time.Sleep(500 * time.Millisecond) // ub's client registers every 100 ms
			if cu.RelayOverUDP() {
				t.Fatal("the udp-blocked peer has a confirmed UDP relay path")
			}

			const count = 50
			send := func(from *client.Client, to string) {
				for i := range count {
					d := bytes.Repeat([]byte{byte(i)}, 1400)
					copy(d, fmt.Sprintf("%s-%d", from.Name(), i))
					for from.Relay(to, d) != nil {
						time.Sleep(time.Millisecond)
					}
				}
			}
			expect := func(to string, from string) {
				for i := range count {
					select {
					case d := <-got[to]:
						want := bytes.Repeat([]byte{byte(i)}, 1400)
						copy(want, fmt.Sprintf("%s-%d", from, i))
						want = append([]byte(from+":"), want...)
						if !bytes.Equal(d, want) {
							t.Fatalf("datagram %d at %s: got %q..., want %q...", i, to, d[:min(len(d), 24)], want[:24])
						}
					case <-time.After(5 * time.Second):
						t.Fatalf("%s received %d of %d datagrams from %s", to, i, count, from)
					}
				}
			}
			send(cu, "cone")
			expect("cone", "ub")
			send(cc, "ub")
			expect("ub", "cone")
			t.Logf("%d datagrams of 1,400 bytes each way: ub over TLS, cone over %s", count, tc.coneVia)
		})
	}
}
