package filter

import "encoding/binary"

// IP protocol numbers the filter looks into.
const (
	protoICMP = 1
	protoTCP  = 6
	protoUDP  = 17
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// kind is what parse found.
type kind uint8

const (
	kindMalformed kind = iota // not a well-formed IPv4 packet (or truncated transport header)
	kindIPv6                  // an IPv6 packet: the overlay is IPv4 only
	kindIPv4                  // a well-formed IPv4 packet
)

// Fragment positions.
const (
	fragNone  = 0 // a whole datagram
	fragFirst = 1 // offset 0 with more fragments: carries the transport header
	fragLater = 2 // offset > 0: no transport header
)

// tuple is the addresses, protocol and ports of a packet or of the packet
// quoted in an ICMP error. For ICMP echo and timestamp messages both ports
// hold the identifier, so a request and its reply share a tuple; other ICMP
// messages have ports 0.
type tuple struct {
	src, dst     [4]byte
	sport, dport uint16
	proto        uint8
}

// packet is what the filter needs of one IPv4 packet.
type packet struct {
	tuple
	flags    uint8 // TCP flags
	frag     uint8 // fragNone, fragFirst, fragLater
	ipID     uint16
	icmpType uint8
	// related is set for an ICMP error (unreachable, time exceeded,
	// parameter problem, ...) that quotes the start of a packet: inner is
	// that packet's tuple, as its sender sent it.
	related bool
	inner   tuple
}

// parse reads the headers of one IP packet. It never panics and does not
// allocate; b is the packet without headroom. A packet that is IPv4 but whose
// transport header is cut short (in a whole datagram or a first fragment) is
// malformed. Options are skipped; the IPv4 header checksum is not verified
// (the kernel checks it on the way in and WireGuard authenticated the bytes).
func parse(b []byte, p *packet) kind {
	*p = packet{}
	if len(b) < 1 {
		return kindMalformed
	}
	switch b[0] >> 4 {
	case 4:
	case 6:
		return kindIPv6
	default:
		return kindMalformed
	}
	n, ok := ipv4Header(b, &p.tuple)
	if !ok {
		return kindMalformed
	}
	p.ipID = binary.BigEndian.Uint16(b[4:6])
	fo := binary.BigEndian.Uint16(b[6:8])
	b = b[n:binary.BigEndian.Uint16(b[2:4])]
	off := fo & 0x1fff
	more := fo&0x2000 != 0
	switch {
	case off != 0:
		p.frag = fragLater
		return kindIPv4
	case more:
		p.frag = fragFirst
	}
	switch p.proto {
	case protoTCP:
		if len(b) < 20 {
			return kindMalformed
		}
		p.sport = binary.BigEndian.Uint16(b[0:2])
		p.dport = binary.BigEndian.Uint16(b[2:4])
		p.flags = b[13]
	case protoUDP:
		if len(b) < 8 {
			return kindMalformed
		}
		p.sport = binary.BigEndian.Uint16(b[0:2])
		p.dport = binary.BigEndian.Uint16(b[2:4])
	case protoICMP:
		if len(b) < 8 {
			return kindMalformed
		}
		p.icmpType = b[0]
		switch b[0] {
		case 0, 8, 13, 14: // echo reply, echo, timestamp, timestamp reply
			id := binary.BigEndian.Uint16(b[4:6])
			p.sport, p.dport = id, id
		case 3, 4, 5, 11, 12: // unreachable, source quench, redirect, time exceeded, parameter problem
			p.related = quoted(b[8:], &p.inner)
		}
	}
	return kindIPv4
}

// ipv4Header checks an IPv4 header at the start of b and fills t's
// addresses and protocol. It returns the header length. The total length
// must fit in b; b may be longer (padding).
func ipv4Header(b []byte, t *tuple) (int, bool) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return 0, false
	}
	n := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if n < 20 || total < n || total > len(b) {
		return 0, false
	}
	copy(t.src[:], b[12:16])
	copy(t.dst[:], b[16:20])
	t.proto = b[9]
	return n, true
}

// quoted parses the packet quoted in an ICMP error: an IPv4 header and at
// least 8 bytes of what followed it (RFC 792), which may be cut short, so
// the quoted total length is not checked against b.
func quoted(b []byte, t *tuple) bool {
	if len(b) < 20 || b[0]>>4 != 4 {
		return false
	}
	n := int(b[0]&0x0f) * 4
	if n < 20 || len(b) < n+8 {
		return false
	}
	if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
		return false // a later fragment quotes no ports
	}
	copy(t.src[:], b[12:16])
	copy(t.dst[:], b[16:20])
	t.proto = b[9]
	l4 := b[n:]
	switch t.proto {
	case protoTCP, protoUDP:
		t.sport = binary.BigEndian.Uint16(l4[0:2])
		t.dport = binary.BigEndian.Uint16(l4[2:4])
	case protoICMP:
		switch l4[0] {
		case 0, 8, 13, 14:
			id := binary.BigEndian.Uint16(l4[4:6])
			t.sport, t.dport = id, id
		}
	}
	return true
}
