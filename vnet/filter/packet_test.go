package filter

import (
	"net/netip"
	"testing"

	"github.com/pvc-project/pvc/security/policy"
)

func TestParse(t *testing.T) {
	a4 := func(s string) [4]byte { return netip.MustParseAddr(s).As4() }
	udp := udpPkt("240.0.0.1", 5000, "240.0.0.2", 53, 10)
	first, later := fragment(udp)
	cut := tcpPkt("240.0.0.1", 1, "240.0.0.2", 2, syn, 0)[:30]
	opts := tcpPkt("240.0.0.1", 1, "240.0.0.2", 2, syn, 0)
	opts = append(append(append([]byte(nil), opts[:20]...), 1, 1, 1, 0), opts[20:]...) // NOP NOP NOP EOL
	opts[0] = 0x46
	opts[3] += 4
	padded := append(append([]byte(nil), udp...), 0, 0, 0, 0)
	for _, c := range []struct {
		name string
		b    []byte
		kind kind
		want packet
	}{
		{"tcp", tcpPkt("240.0.0.1", 1234, "240.0.0.2", 80, synack, 5), kindIPv4,
			packet{tuple: tuple{a4("240.0.0.1"), a4("240.0.0.2"), 1234, 80, protoTCP}, flags: synack, ipID: 0x1234}},
		{"tcp with IP options", opts, kindIPv4,
			packet{tuple: tuple{a4("240.0.0.1"), a4("240.0.0.2"), 1, 2, protoTCP}, flags: syn, ipID: 0x1234}},
		{"udp", udp, kindIPv4, packet{tuple: tuple{a4("240.0.0.1"), a4("240.0.0.2"), 5000, 53, protoUDP}, ipID: 0x1234}},
		{"udp with padding", padded, kindIPv4, packet{tuple: tuple{a4("240.0.0.1"), a4("240.0.0.2"), 5000, 53, protoUDP}, ipID: 0x1234}},
		{"echo", icmpEcho("240.0.0.1", "240.0.0.2", 8, 77), kindIPv4,
			packet{tuple: tuple{a4("240.0.0.1"), a4("240.0.0.2"), 77, 77, protoICMP}, icmpType: 8, ipID: 0x1234}},
		{"unreachable", icmpError("240.0.0.2", "240.0.0.1", 3, 3, udp), kindIPv4,
			packet{tuple: tuple{a4("240.0.0.2"), a4("240.0.0.1"), 0, 0, protoICMP}, icmpType: 3, ipID: 0x1234,
				related: true, inner: tuple{a4("240.0.0.1"), a4("240.0.0.2"), 5000, 53, protoUDP}}},
		{"first fragment", first, kindIPv4,
			packet{tuple: tuple{a4("240.0.0.1"), a4("240.0.0.2"), 5000, 53, protoUDP}, frag: fragFirst, ipID: 0x1234}},
		{"later fragment", later, kindIPv4,
			packet{tuple: tuple{a4("240.0.0.1"), a4("240.0.0.2"), 0, 0, protoUDP}, frag: fragLater, ipID: 0x1234}},
		{"tcp header cut short", fixLen(cut), kindMalformed, packet{}},
		{"total length beyond the buffer", udp[:len(udp)-1], kindMalformed, packet{}},
		{"ihl too small", func() []byte { b := append([]byte(nil), udp...); b[0] = 0x44; return b }(), kindMalformed, packet{}},
		{"ipv6", []byte{0x60, 0, 0, 0}, kindIPv6, packet{}},
		{"empty", nil, kindMalformed, packet{}},
		{"version 5", []byte{0x50}, kindMalformed, packet{}},
	} {
		var p packet
		k := parse(c.b, &p)
		if k != c.kind {
			t.Errorf("%s: kind %d, want %d", c.name, k, c.kind)
			continue
		}
		if k == kindIPv4 && p != c.want {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, p, c.want)
		}
	}
}

// fixLen sets the IPv4 total length to len(b).
func fixLen(b []byte) []byte {
	b = append([]byte(nil), b...)
	b[2], b[3] = byte(len(b)>>8), byte(len(b))
	return b
}

func TestKeyRoundTrip(t *testing.T) {
	l, r := netip.MustParseAddr("240.1.2.3").As4(), netip.MustParseAddr("247.255.0.9").As4()
	k := makeKey(protoUDP, l, r, 53, 65535)
	if k.local() != l || k.remote() != r || k.lport() != 53 || k.rport() != 65535 || k.proto() != protoUDP {
		t.Fatalf("key round trip: %v %v %d %d %d", k.local(), k.remote(), k.lport(), k.rport(), k.proto())
	}
}

// FuzzParse feeds arbitrary bytes to the parser and, both ways, through a
// filter: nothing may panic, and a packet that passes must parse.
func FuzzParse(f *testing.F) {
	udp := udpPkt(selfIP, 5000, w1IP, 53, 10)
	first, later := fragment(udp)
	for _, s := range [][]byte{
		udp, first, later,
		tcpPkt(selfIP, 1, w1IP, 2, syn, 3),
		tcpPkt(w1IP, 2, selfIP, 1, synack, 0),
		icmpEcho(selfIP, w1IP, 8, 1),
		icmpError(w1IP, selfIP, 3, 3, udp),
		icmpError(w1IP, selfIP, 11, 0, icmpEcho(selfIP, w1IP, 8, 1)),
		{0x60, 0, 0, 0}, {0x45}, {},
	} {
		f.Add(s)
	}
	flt, err := New(newFakeTUN(), Config{
		Engine: engine(f, "default allow\n", ""),
		Peers: &peerSet{m: map[netip.Addr]policy.Peer{
			netip.MustParseAddr(selfIP): {Name: "self"},
			netip.MustParseAddr(w1IP):   {Name: "w1"},
		}},
		MaxFlows: 1024,
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p packet
		k := parse(b, &p)
		var acc accum
		now := flt.clock()
		for _, dir := range []policy.Direction{policy.Outbound, policy.Inbound} {
			if flt.check(b, dir, now, &acc) && k != kindIPv4 {
				t.Fatalf("a packet that is not IPv4 passed: %x", b)
			}
		}
		acc.flush()
	})
}
