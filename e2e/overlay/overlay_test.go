// Package overlay tests PVC's data plane in the network lab, in process:
// wireguard-go devices with PVC's Bind and real TUN devices in lab hosts
// behind real NATs, carrying kernel TCP between 240.0.0.0/4 addresses.
package overlay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/interpose/tun"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/vnet/bind"
	"github.com/pvc-project/pvc/vnet/bind/bindtest"
	"golang.zx2c4.com/wireguard/device"
)

// node is one overlay peer living in a lab host.
type node struct {
	name string
	host *netlab.Host
	ip   netip.Addr
	pub  keys.WGPublic
	bind *bind.Bind
	dev  *device.Device
	port uint16
}

func newNode(t testing.TB, ctx context.Context, wg *sync.WaitGroup, relay *bindtest.Relay, h *netlab.Host, name string, ip netip.Addr) *node {
	t.Helper()
	var td *tun.Device
	if err := h.Do(func() error {
		var err error
		td, err = tun.Create(tun.Config{Prefix: netip.PrefixFrom(ip, 16)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	priv, err := keys.NewWG()
	if err != nil {
		t.Fatal(err)
	}
	n := &node{name: name, host: h, ip: ip, pub: priv.Public()}
	n.bind = bind.New(bind.Config{Self: name, Relay: relay.From(name), Auth: &bindtest.Auth{},
		OpenIn: h.Do, ProbeInterval: 500 * time.Millisecond})
	relay.Attach(name, n.bind)
	n.dev = device.NewDevice(td, n.bind, device.NewLogger(device.LogLevelSilent, ""))
	t.Cleanup(n.dev.Close) // closes the TUN too, which removes the interface
	if err := n.dev.IpcSet("private_key=" + hex.EncodeToString(priv[:]) + "\nlisten_port=0\n"); err != nil {
		t.Fatal(err)
	}
	if err := n.dev.Up(); err != nil {
		t.Fatal(err)
	}
	cfg, _ := n.dev.IpcGet()
	for _, l := range strings.Split(cfg, "\n") {
		if v, ok := strings.CutPrefix(l, "listen_port="); ok {
			p, _ := strconv.Atoi(v)
			n.port = uint16(p)
		}
	}
	wg.Add(1)
	go func() { defer wg.Done(); n.bind.Run(ctx) }()
	return n
}

// addPeer configures o as n's peer. Only one side of a pair should keep
// alive (the NATed one, as pvcd does): keepalives set on both sides at once
// start two handshakes that collide, and WireGuard settles that only after
// its 5 s rekey timeout.
func (n *node) addPeer(t testing.TB, o *node, keepalive bool) {
	t.Helper()
	conf := fmt.Sprintf("public_key=%s\nendpoint=peer:%s\nallowed_ip=%s/32\n", hex.EncodeToString(o.pub[:]), o.name, o.ip)
	if keepalive {
		conf += "persistent_keepalive_interval=25\n"
	}
	if err := n.dev.IpcSet(conf); err != nil {
		t.Fatal(err)
	}
}

func (n *node) path(peer string) bind.PeerStatus {
	for _, s := range n.bind.Status() {
		if s.Name == peer {
			return s
		}
	}
	return bind.PeerStatus{}
}

// transfer sends size bytes over TCP from the from host to to's address
// (inside to's host) and checks them with SHA-256. It returns Mbit/s.
func transfer(t testing.TB, from, to *netlab.Host, dst netip.Addr, size int) float64 {
	t.Helper()
	var ln net.Listener
	if err := to.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(dst, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sum := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sum <- [32]byte{}
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		var s [32]byte
		copy(s[:], h.Sum(nil))
		sum <- s
	}()
	var c net.Conn
	if err := from.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	h := sha256.New()
	start := time.Now()
	for sent := 0; sent < size; sent += len(data) {
		if _, err := c.Write(data); err != nil {
			t.Fatal(err)
		}
		h.Write(data)
	}
	c.Close()
	got := <-sum
	secs := time.Since(start).Seconds()
	if hex.EncodeToString(got[:]) != hex.EncodeToString(h.Sum(nil)) {
		t.Fatalf("checksum mismatch over %s -> %s", from.Name, dst)
	}
	return float64(size) * 8 / secs / 1e6
}

// TestOverlayAcrossNATs: a peer at a cone, a symmetric and a udp-blocked
// site each reach a public peer over the overlay with a kernel TCP
// transfer of 20 MiB checked with SHA-256. The cone and symmetric peers
// get a direct path (the public peer learns their NAT's address from
// their probes); the udp-blocked peer stays on the relay.
func TestOverlayAcrossNATs(t *testing.T) {
	l := netlab.New(t, netlab.Spec{Internet: []string{"srv1"}, Sites: []netlab.SiteSpec{
		{Name: "pub", Kind: netlab.Public},
		{Name: "cone", Kind: netlab.Cone},
		{Name: "sym", Kind: netlab.Symmetric},
		{Name: "ub", Kind: netlab.UDPBlocked},
	}})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	relay := bindtest.NewRelay()
	pub := newNode(t, ctx, &wg, relay, l.Site("pub").Hosts[0], "pub", netip.MustParseAddr("240.9.0.1"))
	for i, tc := range []struct {
		site string
		want bind.PathKind
	}{{"cone", bind.PathDirect}, {"sym", bind.PathDirect}, {"ub", bind.PathRelay}} {
		t.Run(tc.site, func(t *testing.T) {
			n := newNode(t, ctx, &wg, relay, l.Site(tc.site).Hosts[0], tc.site, netip.AddrFrom4([4]byte{240, 9, 0, byte(10 + i)}))
			n.addPeer(t, pub, true)
			pub.addPeer(t, n, false)
			n.bind.SetCandidates("pub", []netip.AddrPort{netip.AddrPortFrom(pub.host.Addr, pub.port)})
			deadline := time.Now().Add(5 * time.Second)
			for n.path("pub").Path != tc.want && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			mbps := transfer(t, n.host, pub.host, pub.ip, 20<<20)
			s := n.path("pub")
			t.Logf("%s -> public over the overlay: path %s %s, rtt %v, %.0f Mbit/s (20 MiB, SHA-256 ok)", tc.site, s.Path, s.Remote, s.RTT, mbps)
			if s.Path != tc.want {
				t.Errorf("path %s, want %s", s.Path, tc.want)
			}
			if tc.want == bind.PathDirect && s.TxRelay > s.TxDirect/10 {
				t.Errorf("direct path, but %d bytes went over the relay and %d direct", s.TxRelay, s.TxDirect)
			}
		})
	}
}
