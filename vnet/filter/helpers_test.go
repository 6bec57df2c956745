package filter

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/security/policy"
	"golang.zx2c4.com/wireguard/tun"
)

// Packet builders: IPv4 with correct header and transport checksums.

func csum(b []byte, initial uint32) uint16 {
	s := initial
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// ipv4 wraps l4 (whose checksum field at csumAt, if >= 0, is filled with
// the pseudo-header checksum for TCP/UDP, or the plain one for ICMP).
func ipv4(src, dst string, proto uint8, l4 []byte, csumAt int) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	b := make([]byte, 20+len(l4))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], 0x1234)
	b[6] = 0x40 // DF
	b[8] = 64
	b[9] = proto
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], csum(b[:20], 0))
	copy(b[20:], l4)
	if csumAt >= 0 {
		var pseudo uint32
		if proto != protoICMP {
			ph := make([]byte, 12)
			copy(ph, s[:])
			copy(ph[4:], d[:])
			ph[9] = proto
			binary.BigEndian.PutUint16(ph[10:], uint16(len(l4)))
			pseudo = uint32(^csum(ph, 0))
		}
		binary.BigEndian.PutUint16(b[20+csumAt:], csum(b[20:], pseudo))
	}
	return b
}

func tcpPkt(src string, sport uint16, dst string, dport uint16, flags uint8, payload int) []byte {
	l4 := make([]byte, 20+payload)
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	binary.BigEndian.PutUint32(l4[4:], 1000)
	l4[12] = 5 << 4
	l4[13] = flags
	binary.BigEndian.PutUint16(l4[14:], 65535)
	return ipv4(src, dst, protoTCP, l4, 16)
}

func udpPkt(src string, sport uint16, dst string, dport uint16, payload int) []byte {
	l4 := make([]byte, 8+payload)
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	return ipv4(src, dst, protoUDP, l4, 6)
}

func icmpEcho(src, dst string, typ uint8, id uint16) []byte {
	l4 := make([]byte, 8+16)
	l4[0] = typ
	binary.BigEndian.PutUint16(l4[4:], id)
	binary.BigEndian.PutUint16(l4[6:], 1)
	return ipv4(src, dst, protoICMP, l4, 2)
}

// icmpError quotes the first 28 bytes of orig in an ICMP error of type typ.
func icmpError(src, dst string, typ, code uint8, orig []byte) []byte {
	q := orig
	if len(q) > 28 {
		q = q[:28]
	}
	l4 := make([]byte, 8+len(q))
	l4[0], l4[1] = typ, code
	copy(l4[8:], q)
	return ipv4(src, dst, protoICMP, l4, 2)
}

// fragment returns the IPv4 datagram p as two fragments split after 8
// bytes of its payload.
func fragment(p []byte) (first, later []byte) {
	first = append([]byte(nil), p[:28]...)
	binary.BigEndian.PutUint16(first[2:], 28)
	binary.BigEndian.PutUint16(first[6:], 0x2000) // MF
	later = append(append([]byte(nil), p[:20]...), p[28:]...)
	binary.BigEndian.PutUint16(later[2:], uint16(len(later)))
	binary.BigEndian.PutUint16(later[6:], 1) // offset 8 bytes
	return first, later
}

// fakeTUN is a minimal tun.Device: Read returns queued packets, as many as
// fit in the batch, and errEmpty when none is queued; Write records copies.
type fakeTUN struct {
	mu      sync.Mutex
	queue   [][]byte
	written [][]byte
	discard bool // Write keeps nothing (benchmarks)
	events  chan tun.Event
}

var errEmpty = errors.New("fake tun: nothing queued")

func newFakeTUN() *fakeTUN { return &fakeTUN{events: make(chan tun.Event)} }

func (d *fakeTUN) File() *os.File { return nil }
func (d *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.queue) == 0 {
		return 0, errEmpty
	}
	n := 0
	for n < len(bufs) && len(d.queue) > 0 {
		sizes[n] = copy(bufs[n][offset:], d.queue[0])
		d.queue = d.queue[1:]
		n++
	}
	return n, nil
}
func (d *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	if d.discard {
		return len(bufs), nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range bufs {
		d.written = append(d.written, append([]byte(nil), b[offset:]...))
	}
	return len(bufs), nil
}
func (d *fakeTUN) MTU() (int, error)        { return 1420, nil }
func (d *fakeTUN) Name() (string, error)    { return "fake0", nil }
func (d *fakeTUN) Events() <-chan tun.Event { return d.events }
func (d *fakeTUN) Close() error             { return nil }
func (d *fakeTUN) BatchSize() int           { return 8 }

// peerSet is a Peers whose content tests change.
type peerSet struct {
	mu sync.Mutex
	m  map[netip.Addr]policy.Peer
}

func (s *peerSet) PeerByIP(ip netip.Addr) (policy.Peer, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.m[ip]
	return p, ok
}

func (s *peerSet) remove(ip string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, netip.MustParseAddr(ip))
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// The test cluster: this host is "self" at 240.0.0.1 in group head.
const (
	selfIP = "240.0.0.1"
	w1IP   = "240.0.0.2" // worker w1, inside the site (underlay 192.0.2.7)
	xIP    = "240.0.0.3" // peer x, group other, outside (underlay 203.0.113.9)
	w2IP   = "240.0.0.4" // worker w2, relayed (underlay unknown: outside)
	ghost  = "240.0.0.99"
)

type harness struct {
	t     *testing.T
	f     *Filter
	dev   *fakeTUN
	peers *peerSet
	clock *fakeClock
}

func engine(t testing.TB, global, local string) *policy.Engine {
	t.Helper()
	var g *policy.Global
	if global != "" {
		var err error
		if g, err = policy.ParseGlobal([]byte(global)); err != nil {
			t.Fatal(err)
		}
	}
	var l *policy.Local
	if local != "" {
		var err error
		if l, err = policy.ParseLocal([]byte(local)); err != nil {
			t.Fatal(err)
		}
	}
	e, err := policy.NewEngine(g, l, policy.Identity{Name: "self", Groups: []string{"head"}})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func newHarness(t *testing.T, global, local string, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, dev: newFakeTUN(), clock: &fakeClock{t: time.Unix(1_800_000_000, 0)}}
	h.peers = &peerSet{m: map[netip.Addr]policy.Peer{
		netip.MustParseAddr(w1IP): {Name: "w1", Groups: []string{"workers"}, Underlay: netip.MustParseAddr("192.0.2.7")},
		netip.MustParseAddr(xIP):  {Name: "x", Groups: []string{"other"}, Underlay: netip.MustParseAddr("203.0.113.9")},
		netip.MustParseAddr(w2IP): {Name: "w2", Groups: []string{"workers"}},
	}}
	cfg := Config{
		Engine:  engine(t, global, local),
		Peers:   h.peers,
		LocalIP: netip.MustParseAddr(selfIP),
		Now:     h.clock.now,
	}
	if mod != nil {
		mod(&cfg)
	}
	f, err := New(h.dev, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.f = f
	return h
}

const headroom = 16

// out sends packets from this host (through Read) and returns those that
// reach the inner side (wireguard-go).
func (h *harness) out(pkts ...[]byte) [][]byte {
	h.t.Helper()
	h.dev.mu.Lock()
	h.dev.queue = append(h.dev.queue, pkts...)
	h.dev.mu.Unlock()
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, headroom+2000)
	}
	sizes := make([]int, len(bufs))
	var got [][]byte
	for {
		n, err := h.f.Read(bufs, sizes, headroom)
		for i := 0; i < n; i++ {
			got = append(got, append([]byte(nil), bufs[i][headroom:headroom+sizes[i]]...))
		}
		if err != nil {
			if !errors.Is(err, errEmpty) {
				h.t.Fatalf("Read: %v", err)
			}
			return got
		}
	}
}

// in delivers packets from peers (through Write) and returns those written
// to the TUN.
func (h *harness) in(pkts ...[]byte) [][]byte {
	h.t.Helper()
	bufs := make([][]byte, len(pkts))
	for i, p := range pkts {
		bufs[i] = append(make([]byte, headroom), p...)
	}
	h.dev.mu.Lock()
	h.dev.written = nil
	h.dev.mu.Unlock()
	n, err := h.f.Write(bufs, headroom)
	if err != nil || n != len(pkts) {
		h.t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(pkts))
	}
	h.dev.mu.Lock()
	defer h.dev.mu.Unlock()
	return h.dev.written
}

// passes checks that exactly the packets want (by index in sent) got through.
func passes(t *testing.T, what string, got [][]byte, want ...[]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d packets passed, want %d", what, len(got), len(want))
	}
	for i := range got {
		if string(got[i]) != string(want[i]) {
			t.Fatalf("%s: packet %d is not the one expected", what, i)
		}
	}
}

// rule returns the counters of decision d (zero if none).
func rule(s Stats, allow bool, layer policy.Layer, r int) RuleStats {
	for _, rs := range s.Rules {
		if rs.Allow == allow && rs.Layer == layer && rs.Rule == r {
			return rs
		}
	}
	return RuleStats{}
}
