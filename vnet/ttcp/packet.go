package ttcp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// TCP option kinds.
const (
	optEnd    = 0
	optNOP    = 1
	optMSS    = 2
	optWScale = 3
	optSACKOK = 4
	optTS     = 8
)

// SYNFromPacket reads the description of a client SYN from an IPv4 packet
// as NFQUEUE hands it over (IP header first). The packet must be a TCP
// segment with SYN set and ACK, RST and FIN clear.
func SYNFromPacket(p []byte) (SYN, error) {
	bad := func(format string, args ...any) (SYN, error) {
		return SYN{}, fmt.Errorf("%w: packet: %s", ErrBadSYN, fmt.Sprintf(format, args...))
	}
	if len(p) < 20 {
		return bad("%d bytes: shorter than an IPv4 header", len(p))
	}
	if p[0]>>4 != 4 {
		return bad("IP version %d", p[0]>>4)
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < 20 || len(p) < ihl {
		return bad("IPv4 header length %d of %d bytes", ihl, len(p))
	}
	total := int(binary.BigEndian.Uint16(p[2:]))
	if total < ihl || total > len(p) {
		return bad("IPv4 total length %d of %d bytes", total, len(p))
	}
	if p[9] != 6 {
		return bad("protocol %d, not TCP", p[9])
	}
	if binary.BigEndian.Uint16(p[6:])&0x3fff != 0 {
		return bad("a fragment")
	}
	t := p[ihl:total]
	if len(t) < 20 {
		return bad("TCP header of %d bytes", len(t))
	}
	off := int(t[12]>>4) * 4
	if off < 20 || off > len(t) {
		return bad("TCP data offset %d of %d bytes", off, len(t))
	}
	if fl := t[13]; fl&(tcpSYN|tcpACK|tcpRST|tcpFIN) != tcpSYN {
		return bad("TCP flags %#x: not a plain SYN", fl)
	}
	s := SYN{
		Src:    netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[12:16])), binary.BigEndian.Uint16(t[0:])),
		Dst:    netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[16:20])), binary.BigEndian.Uint16(t[2:])),
		ISN:    binary.BigEndian.Uint32(t[4:]),
		Window: binary.BigEndian.Uint16(t[14:]),
		WScale: -1,
	}
	opts := t[20:off]
	for len(opts) > 0 {
		kind := opts[0]
		if kind == optEnd {
			break
		}
		if kind == optNOP {
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || int(opts[1]) < 2 || int(opts[1]) > len(opts) {
			return bad("TCP option %d: truncated", kind)
		}
		val := opts[2:opts[1]]
		switch kind {
		case optMSS:
			if len(val) != 2 {
				return bad("MSS option of %d bytes", len(val))
			}
			s.MSS = binary.BigEndian.Uint16(val)
		case optWScale:
			if len(val) != 1 {
				return bad("window scale option of %d bytes", len(val))
			}
			s.WScale = int8(min(val[0], 14)) // RFC 7323: larger shifts are used as 14
		case optSACKOK:
			if len(val) != 0 {
				return bad("SACK-permitted option of %d bytes", len(val))
			}
			s.SACKOK = true
		case optTS:
			if len(val) != 8 {
				return bad("timestamps option of %d bytes", len(val))
			}
			s.HasTS = true
			s.TSVal = binary.BigEndian.Uint32(val)
			s.TSEcr = binary.BigEndian.Uint32(val[4:])
		}
		opts = opts[opts[1]:]
	}
	if s.MSS != 0 && s.MSS < 64 {
		s.MSS = 64 // the description's floor; the kernel clamps tiny MSS values too
	}
	if err := s.Validate(); err != nil {
		return SYN{}, err
	}
	return s, nil
}

// Packet builds the IPv4 packet of the SYN that s describes, from src to
// dst instead of s.Src and s.Dst (the server injects the SYN toward its
// own local address, not the public one the client saw), with the given
// TTL, and correct IP and TCP checksums.
func (s SYN) Packet(src, dst netip.AddrPort, ttl uint8) []byte {
	var opts []byte
	if s.MSS != 0 {
		opts = binary.BigEndian.AppendUint16(append(opts, optMSS, 4), s.MSS)
	}
	if s.SACKOK {
		opts = append(opts, optSACKOK, 2)
	}
	if s.HasTS {
		opts = append(opts, optTS, 10)
		opts = binary.BigEndian.AppendUint32(opts, s.TSVal)
		opts = binary.BigEndian.AppendUint32(opts, s.TSEcr)
	}
	if s.WScale >= 0 {
		opts = append(opts, optNOP, optWScale, 3, byte(s.WScale))
	}
	return buildTCP(src, dst, s.ISN, 0, tcpSYN, s.Window, opts, ttl)
}

// buildTCP builds an IPv4 TCP segment without payload. Options are padded
// at the end with End-of-options bytes to a multiple of 4 bytes.
func buildTCP(src, dst netip.AddrPort, seq, ack uint32, flags byte, window uint16, opts []byte, ttl uint8) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, optEnd)
	}
	tcpLen := 20 + len(opts)
	p := make([]byte, 20+tcpLen)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[6:], 0x4000) // DF, as Linux sends SYNs
	p[8] = ttl
	p[9] = 6
	sa, da := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:], sa[:])
	copy(p[16:], da[:])
	binary.BigEndian.PutUint16(p[10:], ^sum16(p[:20], 0))
	t := p[20:]
	binary.BigEndian.PutUint16(t[0:], src.Port())
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	binary.BigEndian.PutUint32(t[4:], seq)
	binary.BigEndian.PutUint32(t[8:], ack)
	t[12] = byte(tcpLen/4) << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:], window)
	copy(t[20:], opts)
	// Pseudo-header: source, destination, zero, protocol, TCP length.
	var ph [12]byte
	copy(ph[0:], sa[:])
	copy(ph[4:], da[:])
	ph[9] = 6
	binary.BigEndian.PutUint16(ph[10:], uint16(tcpLen))
	binary.BigEndian.PutUint16(t[16:], ^sum16(t, sum16(ph[:], 0)))
	return p
}

// sum16 adds b as big-endian 16-bit words to the one's-complement sum
// initial (RFC 1071) and folds the carries.
func sum16(b []byte, initial uint16) uint16 {
	s := uint32(initial)
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}
