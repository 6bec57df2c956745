package bind

import (
	"context"
	"encoding/hex"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pvc-project/pvc/security/keys"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// memRelay is an in-memory broker relay between the binds of a test.
type memRelay struct {
	mu    sync.Mutex
	binds map[string]*Bind
	sent  atomic.Uint64
}

type relaySender struct {
	r    *memRelay
	from string
}

func (s relaySender) SendRelay(peer string, pkt []byte) error {
	s.r.mu.Lock()
	b := s.r.binds[peer]
	s.r.mu.Unlock()
	s.r.sent.Add(1)
	if b != nil {
		b.DeliverRelay(s.from, pkt)
	}
	return nil
}

// switchAuth accepts probes while on; no real signatures (the security
// module signs in pvcd).
type switchAuth struct{ off atomic.Bool }

func (a *switchAuth) Sign(msg []byte) []byte { return []byte("ok") }
func (a *switchAuth) Verify(peer string, msg, sig []byte) bool {
	return !a.off.Load() && string(sig) == "ok"
}

type node struct {
	name string
	ip   netip.Addr
	tun  *tuntest.ChannelTUN
	bind *Bind
	dev  *device.Device
	pub  keys.WGPublic
	auth *switchAuth
}

func newNode(t *testing.T, ctx context.Context, wg *sync.WaitGroup, r *memRelay, name string, ip netip.Addr) *node {
	t.Helper()
	priv, err := keys.NewWG()
	if err != nil {
		t.Fatal(err)
	}
	n := &node{name: name, ip: ip, tun: tuntest.NewChannelTUN(), pub: priv.Public(), auth: &switchAuth{}}
	n.bind = New(Config{Self: name, Relay: relaySender{r, name}, Auth: n.auth, ProbeInterval: 200 * time.Millisecond})
	r.mu.Lock()
	r.binds[name] = n.bind
	r.mu.Unlock()
	n.dev = device.NewDevice(n.tun.TUN(), n.bind, device.NewLogger(device.LogLevelSilent, ""))
	if err := n.dev.IpcSet("private_key=" + hex.EncodeToString(priv[:]) + "\nlisten_port=0\n"); err != nil {
		t.Fatal(err)
	}
	if err := n.dev.Up(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.dev.Close)
	wg.Add(1)
	go func() { defer wg.Done(); n.bind.Run(ctx) }()
	return n
}

// twoNodes starts nodes a (240.0.0.1) and b (240.0.0.2) on a shared
// in-memory relay; they stop when the test ends.
func twoNodes(t *testing.T) (*memRelay, *node, *node) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	r := &memRelay{binds: map[string]*Bind{}}
	a := newNode(t, ctx, &wg, r, "a", netip.MustParseAddr("240.0.0.1"))
	b := newNode(t, ctx, &wg, r, "b", netip.MustParseAddr("240.0.0.2"))
	return r, a, b
}

func (n *node) addPeer(t *testing.T, o *node) {
	t.Helper()
	conf := "public_key=" + hex.EncodeToString(o.pub[:]) + "\nendpoint=peer:" + o.name + "\nallowed_ip=" + o.ip.String() + "/32\n"
	if err := n.dev.IpcSet(conf); err != nil {
		t.Fatal(err)
	}
}

func (n *node) localPort(t *testing.T) uint16 {
	t.Helper()
	cfg, err := n.dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(cfg, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			port, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return uint16(port)
		}
	}
	t.Fatal("no listen_port in the device's configuration")
	return 0
}

// pingThrough sends n ICMP packets from a to b through the overlay and
// returns how many arrived.
func pingThrough(a, b *node, n int, gap time.Duration) int {
	got := 0
	for i := 0; i < n; i++ {
		a.tun.Outbound <- tuntest.Ping(b.ip, a.ip)
		select {
		case <-b.tun.Inbound:
			got++
		case <-time.After(2 * time.Second):
		}
		time.Sleep(gap)
	}
	return got
}

func pathOf(b *Bind, peer string) PeerStatus {
	for _, s := range b.Status() {
		if s.Name == peer {
			return s
		}
	}
	return PeerStatus{}
}

func waitPath(t *testing.T, b *Bind, peer string, want PathKind, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for pathOf(b, peer).Path != want {
		if time.Now().After(deadline) {
			t.Fatalf("path to %s is %v after %v, want %s", peer, pathOf(b, peer).Path, within, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRelayThenDirectThenFallback: WireGuard traffic between two devices
// flows over the relay first, moves to the direct path once probes confirm
// it without losing packets, and falls back to the relay when the direct
// path stops answering.
func TestRelayThenDirectThenFallback(t *testing.T) {
	_, a, b := twoNodes(t)
	a.addPeer(t, b)
	b.addPeer(t, a)

	if got := pingThrough(a, b, 5, 0); got != 5 {
		t.Fatalf("relay only: %d of 5 arrived", got)
	}
	if s := pathOf(a.bind, "b"); s.Path != PathRelay || s.TxRelay == 0 {
		t.Fatalf("relay only: status %+v", s)
	}

	// Give both sides each other's address: the direct path is confirmed
	// while traffic keeps flowing.
	lo := netip.MustParseAddr("127.0.0.1")
	a.bind.SetCandidates("b", []Candidate{{Addr: netip.AddrPortFrom(lo, b.localPort(t)), Kind: PathDirect}})
	done := make(chan int)
	go func() { done <- pingThrough(a, b, 40, 10*time.Millisecond) }()
	waitPath(t, a.bind, "b", PathDirect, 3*time.Second)
	if got := <-done; got != 40 {
		t.Errorf("during the move to the direct path %d of 40 arrived", got)
	}
	before := pathOf(a.bind, "b").TxDirect
	if got := pingThrough(a, b, 5, 0); got != 5 {
		t.Errorf("direct: %d of 5 arrived", got)
	}
	if s := pathOf(a.bind, "b"); s.TxDirect <= before || s.Remote == "" {
		t.Errorf("direct: status %+v, want direct bytes to grow", s)
	}
	// b learned a's address from a's probes (peer-reflexive) and took it:
	// not one of a's own addresses as far as b knows, so "punched".
	waitPath(t, b.bind, "a", PathPunched, 3*time.Second)

	// b stops answering a's probes: a's direct path expires, traffic goes
	// back to the relay and still arrives.
	b.auth.off.Store(true)
	waitPath(t, a.bind, "b", PathRelay, 3*time.Second)
	relayBefore := pathOf(a.bind, "b").TxRelay
	if got := pingThrough(a, b, 5, 0); got != 5 {
		t.Errorf("after fallback: %d of 5 arrived", got)
	}
	if s := pathOf(a.bind, "b"); s.TxRelay <= relayBefore || s.Changes < 2 {
		t.Errorf("after fallback: status %+v, want relay bytes to grow and 2 path changes", s)
	}
}

// TestUnknownSourceDropped: a WireGuard-looking datagram from an address
// that is no confirmed path is dropped and counted.
func TestUnknownSourceDropped(t *testing.T) {
	_, a, b := twoNodes(t)
	ep, err := b.bind.std.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), a.localPort(t)).String())
	if err != nil {
		t.Fatal(err)
	}
	fake := make([]byte, 148)
	fake[0] = 1 // a handshake initiation's type
	if err := b.bind.std.Send([][]byte{fake}, ep); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		if unknown, _ := a.bind.Counters(); unknown == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the datagram from an unknown address was not counted as dropped")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestParseEndpoint(t *testing.T) {
	b := New(Config{Self: "x"})
	if ep, err := b.ParseEndpoint("peer:node1"); err != nil || ep.(*Endpoint).Name() != "node1" {
		t.Errorf("peer:node1: %v %v", ep, err)
	}
	for _, bad := range []string{"", "peer:", "203.0.113.5:51820", "node1"} {
		if _, err := b.ParseEndpoint(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// directPair starts a and b, and brings a's path to b onto the direct
// path over loopback (b learns a's address from a's probes).
func directPair(t *testing.T) (*memRelay, *node, *node) {
	t.Helper()
	r, a, b := twoNodes(t)
	a.addPeer(t, b)
	b.addPeer(t, a)
	if got := pingThrough(a, b, 2, 0); got != 2 {
		t.Fatalf("relay only: %d of 2 arrived", got)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	a.bind.SetCandidates("b", []Candidate{{Addr: netip.AddrPortFrom(lo, b.localPort(t)), Kind: PathDirect}})
	waitPath(t, a.bind, "b", PathDirect, 3*time.Second)
	waitPath(t, b.bind, "a", PathPunched, 3*time.Second)
	return r, a, b
}

// oneWay sends packets from a to b every gap for d; b's side takes them
// and answers nothing.
func oneWay(a, b *node, d, gap time.Duration) {
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-b.tun.Inbound:
			case <-done:
				return
			}
		}
	}()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(gap) {
		a.tun.Outbound <- tuntest.Ping(b.ip, a.ip)
	}
	close(done)
}

// TestOneWayTrafficNotInDoubt: datagrams that go one way only (a stream
// nobody answers, WireGuard's passive keepalive) bring nothing back on the
// path, but the path answers its probes: it stays direct and nothing is
// copied to the relay. When the path then dies, the same silence puts it in
// doubt (datagrams copied to the relay) before it is dropped.
func TestOneWayTrafficNotInDoubt(t *testing.T) {
	_, a, b := directPair(t)
	before := pathOf(a.bind, "b")
	// 50 probe ticks (ProbeInterval 200 ms in these tests: a tick is 20 ms).
	oneWay(a, b, time.Second, 2*time.Millisecond)
	after := pathOf(a.bind, "b")
	if after.Path != PathDirect || after.TxDirect <= before.TxDirect {
		t.Fatalf("one-way traffic: path %+v, want direct and carrying it", after)
	}
	if after.TxRelay != before.TxRelay {
		t.Errorf("one-way traffic on a path that answers its probes: %d bytes copied to the relay, want none",
			after.TxRelay-before.TxRelay)
	}

	// The path dies (b answers no more probes, and sends nothing anyway).
	b.auth.off.Store(true)
	relayBefore := pathOf(a.bind, "b").TxRelay
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-b.tun.Inbound:
			case <-done:
				return
			}
		}
	}()
	defer close(done)
	deadline := time.Now().Add(3 * time.Second)
	for {
		a.tun.Outbound <- tuntest.Ping(b.ip, a.ip)
		s := pathOf(a.bind, "b")
		if s.Path == PathDirect && s.TxRelay > relayBefore {
			break // in doubt: copies while still direct
		}
		if s.Path != PathDirect {
			t.Fatalf("the dead path was dropped without a time in doubt (no copies to the relay): %+v", s)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dead path is neither in doubt nor dropped after 3 s: %+v", s)
		}
		time.Sleep(2 * time.Millisecond)
	}
	waitPath(t, a.bind, "b", PathRelay, 3*time.Second)
}
