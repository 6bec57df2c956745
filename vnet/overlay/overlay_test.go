package overlay

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/vnet/bind"
	"github.com/pvc-project/pvc/vnet/bind/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

type tnode struct {
	name string
	ip   netip.Addr
	pub  keys.WGPublic
	tun  *tuntest.ChannelTUN
	o    *Overlay
}

func newTNode(t *testing.T, ctx context.Context, wg *sync.WaitGroup, r *bindtest.Relay, name, ip string) *tnode {
	t.Helper()
	priv, err := keys.NewWG()
	if err != nil {
		t.Fatal(err)
	}
	n := &tnode{name: name, ip: netip.MustParseAddr(ip), pub: priv.Public(), tun: tuntest.NewChannelTUN()}
	n.o, err = New(Config{Self: name, Address: n.ip, PrivateKey: priv, TUN: n.tun.TUN(), Relay: r.From(name),
		Auth: &bindtest.Auth{}, ProbeInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.o.Close)
	r.Attach(name, n.o)
	wg.Add(1)
	go func() { defer wg.Done(); n.o.Run(ctx) }()
	return n
}

func (n *tnode) status(peer string) PeerStatus {
	for _, s := range n.o.Peers() {
		if s.Name == peer {
			return s
		}
	}
	return PeerStatus{}
}

func ping(a, b *tnode) bool {
	a.tun.Outbound <- tuntest.Ping(b.ip, a.ip)
	select {
	case <-b.tun.Inbound:
		return true
	case <-time.After(2 * time.Second):
		return false
	}
}

// TestOnDemand: a known peer is probed only once traffic flows; the first
// packet goes over the relay, the path then moves to direct; device
// counters and handshake time are reported; removing the peer cuts it off.
func TestOnDemand(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	r := bindtest.NewRelay()
	a := newTNode(t, ctx, &wg, r, "a", "240.5.0.1")
	b := newTNode(t, ctx, &wg, r, "b", "240.5.0.2")
	lo := netip.MustParseAddr("127.0.0.1")
	if err := a.o.SetPeer(Peer{Name: "b", IP: b.ip, Key: b.pub, KeepAlive: true, Candidates: []bind.Candidate{{Addr: netip.AddrPortFrom(lo, b.o.Port()), Kind: bind.PathDirect}}}); err != nil {
		t.Fatal(err)
	}
	if err := b.o.SetPeer(Peer{Name: "a", IP: a.ip, Key: a.pub}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if s := a.status("b"); s.Active || s.Path != bind.PathRelay {
		t.Errorf("before any traffic: %+v, want inactive", s)
	}
	if !ping(a, b) {
		t.Fatal("first packet did not arrive")
	}
	deadline := time.Now().Add(3 * time.Second)
	for a.status("b").Path != bind.PathDirect && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !ping(a, b) {
		t.Error("packet on the direct path did not arrive")
	}
	s := a.status("b")
	if !s.Active || s.Path != bind.PathDirect || s.LastHandshake.IsZero() || s.TxBytes == 0 {
		t.Errorf("after traffic: %+v, want active, direct, a handshake and bytes", s)
	}
	if err := b.o.RemovePeer("a"); err != nil {
		t.Fatal(err)
	}
	if ping(a, b) {
		t.Error("a packet arrived from a removed peer")
	}
	if err := b.o.RemovePeer("a"); err == nil {
		t.Error("removing an unknown peer: no error")
	}
}

func TestSetPeerBad(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	r := bindtest.NewRelay()
	a := newTNode(t, ctx, &wg, r, "a", "240.5.0.1")
	k, _ := keys.NewWG()
	ip := netip.MustParseAddr("240.5.0.9")
	if err := a.o.SetPeer(Peer{Name: "x", IP: ip, Key: k.Public()}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []Peer{{Name: "", IP: ip}, {Name: "a", IP: ip}, {Name: "y", IP: ip, Key: k.Public()}} {
		if err := a.o.SetPeer(p); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
}
