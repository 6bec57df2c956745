package ttcp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

// linuxSYN is what a Linux 6.x client sent in the lab (values from a
// captured SYN: the kernel's usual options, in its order).
var linuxSYN = SYN{
	Src: netip.MustParseAddrPort("203.0.113.101:59625"), Dst: netip.MustParseAddrPort("203.0.113.100:7001"),
	ISN: 1884382381, Window: 64240, MSS: 1460, WScale: 10, SACKOK: true, HasTS: true, TSVal: 1218289214,
}

func TestSYNRoundTrip(t *testing.T) {
	for _, s := range []SYN{
		linuxSYN,
		{Src: netip.MustParseAddrPort("198.18.1.2:1"), Dst: netip.MustParseAddrPort("203.0.113.10:65535"), WScale: -1},
		{Src: netip.MustParseAddrPort("198.18.1.2:40000"), Dst: netip.MustParseAddrPort("198.51.100.7:443"), ISN: ^uint32(0), Window: 65535, MSS: 64, WScale: 0, HasTS: true, TSVal: 1, TSEcr: 2},
		{Src: netip.MustParseAddrPort("198.18.1.2:40000"), Dst: netip.MustParseAddrPort("198.51.100.7:443"), MSS: 65535, WScale: 14, SACKOK: true},
	} {
		b, err := s.Marshal()
		if err != nil {
			t.Fatalf("%v: %v", s, err)
		}
		got, err := ParseSYN(b)
		if err != nil {
			t.Fatalf("%v: %v", s, err)
		}
		if got != s {
			t.Errorf("round trip: got %v, want %v", got, s)
		}
	}
}

func TestSYNMarshalRefusesBad(t *testing.T) {
	ok := linuxSYN
	for name, mod := range map[string]func(*SYN){
		"IPv6 source":     func(s *SYN) { s.Src = netip.MustParseAddrPort("[2001:db8::1]:5") },
		"zero source":     func(s *SYN) { s.Src = netip.AddrPort{} },
		"port 0":          func(s *SYN) { s.Dst = netip.AddrPortFrom(s.Dst.Addr(), 0) },
		"unspecified":     func(s *SYN) { s.Dst = netip.MustParseAddrPort("0.0.0.0:5") },
		"multicast":       func(s *SYN) { s.Dst = netip.MustParseAddrPort("224.0.0.1:5") },
		"broadcast":       func(s *SYN) { s.Src = netip.MustParseAddrPort("255.255.255.255:5") },
		"wscale 15":       func(s *SYN) { s.WScale = 15 },
		"wscale -2":       func(s *SYN) { s.WScale = -2 },
		"tiny MSS":        func(s *SYN) { s.MSS = 10 },
		"TS without flag": func(s *SYN) { s.HasTS = false },
	} {
		s := ok
		mod(&s)
		if _, err := s.Marshal(); !errors.Is(err, ErrBadSYN) {
			t.Errorf("%s: Marshal error %v, want ErrBadSYN", name, err)
		}
	}
}

func TestParseSYNBad(t *testing.T) {
	good, err := linuxSYN.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for name, b := range map[string][]byte{
		"empty":          nil,
		"version 0":      mod(func(b []byte) []byte { b[0] = 0; return b }),
		"version 2":      mod(func(b []byte) []byte { b[0] = 2; return b }),
		"short":          good[:synLen-1],
		"trailing":       append(bytes.Clone(good), 0),
		"unknown flag":   mod(func(b []byte) []byte { b[1] |= 0x80; return b }),
		"zero src addr":  mod(func(b []byte) []byte { copy(b[2:6], []byte{0, 0, 0, 0}); return b }),
		"zero dst port":  mod(func(b []byte) []byte { b[12], b[13] = 0, 0; return b }),
		"MSS no flag":    mod(func(b []byte) []byte { b[1] &^= flagMSS; return b }),
		"flag no MSS":    mod(func(b []byte) []byte { b[20], b[21] = 0, 0; return b }),
		"wscale 15":      mod(func(b []byte) []byte { b[22] = 15; return b }),
		"wscale no flag": mod(func(b []byte) []byte { b[1] &^= flagWScale; return b }),
		"TS no flag":     mod(func(b []byte) []byte { b[1] &^= flagTS; return b }),
	} {
		if s, err := ParseSYN(b); !errors.Is(err, ErrBadSYN) {
			t.Errorf("%s: got %v, %v; want ErrBadSYN", name, s, err)
		}
	}
}

// checksumOK verifies the IPv4 header and TCP checksums of p.
func checksumOK(p []byte) bool {
	if sum16(p[:20], 0) != 0xffff {
		return false
	}
	tcp := p[20:]
	var ph [12]byte
	copy(ph[0:], p[12:20])
	ph[9] = 6
	binary.BigEndian.PutUint16(ph[10:], uint16(len(tcp)))
	return sum16(tcp, sum16(ph[:], 0)) == 0xffff
}

func TestPacketRoundTrip(t *testing.T) {
	local := netip.MustParseAddrPort("198.18.1.2:7001")
	for _, s := range []SYN{linuxSYN, {Src: linuxSYN.Src, Dst: linuxSYN.Dst, ISN: 7, WScale: -1}, {Src: linuxSYN.Src, Dst: linuxSYN.Dst, MSS: 536, WScale: 0, SACKOK: true}} {
		p := s.Packet(s.Src, local, 64)
		if !checksumOK(p) {
			t.Errorf("%v: bad checksums in %x", s, p)
		}
		if p[8] != 64 {
			t.Errorf("TTL %d", p[8])
		}
		got, err := SYNFromPacket(p)
		if err != nil {
			t.Fatal(err)
		}
		want := s
		want.Dst = local
		if got != want {
			t.Errorf("got %v, want %v", got, want)
		}
	}
}

// A SYN with an odd-length option area padded by the builder, checked
// against an independently known checksum: the RFC 1071 example words.
func TestSum16(t *testing.T) {
	// RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2 (before complement).
	if got := sum16([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, 0); got != 0xddf2 {
		t.Errorf("sum16 = %#x, want 0xddf2", got)
	}
	if got := sum16([]byte{0xff}, 0x0101); got != 0x0101+0xff00-0xffff {
		t.Errorf("odd byte: %#x", got)
	}
}

func TestSYNFromPacketBad(t *testing.T) {
	good := linuxSYN.Packet(linuxSYN.Src, linuxSYN.Dst, 64)
	mod := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	for name, p := range map[string][]byte{
		"empty":         nil,
		"short":         good[:19],
		"IPv6":          mod(func(b []byte) { b[0] = 0x65 }),
		"IHL 4":         mod(func(b []byte) { b[0] = 0x44 }),
		"IHL too long":  mod(func(b []byte) { b[0] = 0x4f }),
		"total > len":   mod(func(b []byte) { binary.BigEndian.PutUint16(b[2:], 2000) }),
		"total < IHL":   mod(func(b []byte) { binary.BigEndian.PutUint16(b[2:], 10) }),
		"UDP":           mod(func(b []byte) { b[9] = 17 }),
		"fragment":      mod(func(b []byte) { b[7] = 8 }),
		"SYN/ACK":       mod(func(b []byte) { b[33] |= tcpACK }),
		"RST":           mod(func(b []byte) { b[33] = tcpRST }),
		"no SYN":        mod(func(b []byte) { b[33] = tcpACK }),
		"data off 4":    mod(func(b []byte) { b[32] = 4 << 4 }),
		"data off big":  mod(func(b []byte) { b[32] = 15 << 4 }),
		"tcp truncated": good[:30],
		"MSS len 3":     mod(func(b []byte) { b[41] = 3 }),
		"option len 0":  mod(func(b []byte) { b[41] = 0 }),
		"option overrun": mod(func(b []byte) {
			b[40], b[41] = 99, 40
		}),
		"port 0": mod(func(b []byte) { b[20], b[21] = 0, 0 }),
	} {
		if s, err := SYNFromPacket(p); !errors.Is(err, ErrBadSYN) {
			t.Errorf("%s: got %v, %v; want ErrBadSYN", name, s, err)
		}
	}
}

func FuzzParseSYN(f *testing.F) {
	b, _ := linuxSYN.Marshal()
	f.Add(b)
	f.Add([]byte{1})
	f.Add(make([]byte, synLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSYN(b)
		if err != nil {
			return
		}
		out, err := s.Marshal()
		if err != nil {
			t.Fatalf("parsed %v does not marshal: %v", s, err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("not canonical: %x → %v → %x", b, s, out)
		}
	})
}

func FuzzSYNFromPacket(f *testing.F) {
	f.Add(linuxSYN.Packet(linuxSYN.Src, linuxSYN.Dst, 64))
	f.Add(SYN{Src: linuxSYN.Src, Dst: linuxSYN.Dst, WScale: -1}.Packet(linuxSYN.Src, linuxSYN.Dst, 1))
	f.Fuzz(func(t *testing.T, p []byte) {
		s, err := SYNFromPacket(p)
		if err != nil {
			return
		}
		again, err := SYNFromPacket(s.Packet(s.Src, s.Dst, 64))
		if err != nil || again != s {
			t.Fatalf("rebuilt packet of %v reads as %v, %v", s, again, err)
		}
		if _, err := s.Marshal(); err != nil {
			t.Fatalf("%v does not marshal: %v", s, err)
		}
	})
}
