package ttcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// SYN describes the client's opening segment: what the server must inject
// so that its kernel answers as if the SYN had crossed its firewall. Src is
// the client's public endpoint (after its own NAT), Dst the server's public
// endpoint as the client dialled it. It is carried opaquely by the broker.
type SYN struct {
	Src, Dst netip.AddrPort // IPv4 only in version 1
	ISN      uint32         // the client's initial sequence number
	Window   uint16         // the advertised (unscaled) window
	MSS      uint16         // 0: no MSS option
	WScale   int8           // window scale shift 0-14; -1: no option
	SACKOK   bool           // SACK-permitted option
	HasTS    bool           // timestamps option present
	TSVal    uint32         // with HasTS
	TSEcr    uint32         // with HasTS (0 in a SYN)
}

// Version 1 of the encoding, fixed length, big endian:
//
//	0  version (1)
//	1  flags: bit0 SACK-permitted, bit1 timestamps, bit2 MSS, bit3 window scale
//	2  src IPv4 (4), src port (2)
//	8  dst IPv4 (4), dst port (2)
//	14 ISN (4)
//	18 window (2)
//	20 MSS (2)
//	22 window scale (1)
//	23 TSval (4)
//	27 TSecr (4)
//	31 end
const (
	synVersion = 1
	synLen     = 31

	flagSACK   = 1 << 0
	flagTS     = 1 << 1
	flagMSS    = 1 << 2
	flagWScale = 1 << 3
	flagsKnown = flagSACK | flagTS | flagMSS | flagWScale
)

// ErrBadSYN is wrapped by every error of ParseSYN and of the packet parsers.
var ErrBadSYN = errors.New("bad SYN description")

// Validate checks what both Marshal and Parse require.
func (s SYN) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadSYN, fmt.Sprintf(format, args...))
	}
	for _, ap := range []netip.AddrPort{s.Src, s.Dst} {
		a := ap.Addr()
		if !a.Is4() {
			return bad("address %v: want IPv4", ap)
		}
		if a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return bad("address %v: not a unicast host", ap)
		}
		if ap.Port() == 0 {
			return bad("address %v: port 0", ap)
		}
	}
	if s.WScale < -1 || s.WScale > 14 {
		return bad("window scale %d: want 0-14 or -1 (none)", s.WScale)
	}
	if s.MSS != 0 && s.MSS < 64 {
		return bad("MSS %d: want 0 (none) or at least 64", s.MSS)
	}
	if !s.HasTS && (s.TSVal != 0 || s.TSEcr != 0) {
		return bad("timestamp values without the timestamps option")
	}
	return nil
}

// Marshal encodes s in the versioned binary form that ParseSYN reads.
func (s SYN) Marshal() ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, synLen)
	b[0] = synVersion
	var f byte
	if s.SACKOK {
		f |= flagSACK
	}
	if s.HasTS {
		f |= flagTS
	}
	if s.MSS != 0 {
		f |= flagMSS
	}
	if s.WScale >= 0 {
		f |= flagWScale
		b[22] = byte(s.WScale)
	}
	b[1] = f
	putAP(b[2:], s.Src)
	putAP(b[8:], s.Dst)
	binary.BigEndian.PutUint32(b[14:], s.ISN)
	binary.BigEndian.PutUint16(b[18:], s.Window)
	binary.BigEndian.PutUint16(b[20:], s.MSS)
	binary.BigEndian.PutUint32(b[23:], s.TSVal)
	binary.BigEndian.PutUint32(b[27:], s.TSEcr)
	return b, nil
}

func putAP(b []byte, ap netip.AddrPort) {
	a := ap.Addr().As4()
	copy(b, a[:])
	binary.BigEndian.PutUint16(b[4:], ap.Port())
}

func getAP(b []byte) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), binary.BigEndian.Uint16(b[4:]))
}

// ParseSYN decodes a description made by Marshal. It accepts exactly one
// encoding per description: unknown versions, flags, trailing bytes and
// fields set without their flag are errors.
func ParseSYN(b []byte) (SYN, error) {
	if len(b) == 0 {
		return SYN{}, fmt.Errorf("%w: empty", ErrBadSYN)
	}
	if b[0] != synVersion {
		return SYN{}, fmt.Errorf("%w: version %d (want %d)", ErrBadSYN, b[0], synVersion)
	}
	if len(b) != synLen {
		return SYN{}, fmt.Errorf("%w: %d bytes (want %d)", ErrBadSYN, len(b), synLen)
	}
	f := b[1]
	if f&^flagsKnown != 0 {
		return SYN{}, fmt.Errorf("%w: unknown flags %#x", ErrBadSYN, f&^flagsKnown)
	}
	s := SYN{
		Src: getAP(b[2:]), Dst: getAP(b[8:]),
		ISN:    binary.BigEndian.Uint32(b[14:]),
		Window: binary.BigEndian.Uint16(b[18:]),
		MSS:    binary.BigEndian.Uint16(b[20:]),
		WScale: -1,
		SACKOK: f&flagSACK != 0,
		HasTS:  f&flagTS != 0,
		TSVal:  binary.BigEndian.Uint32(b[23:]),
		TSEcr:  binary.BigEndian.Uint32(b[27:]),
	}
	if (f&flagMSS != 0) != (s.MSS != 0) {
		return SYN{}, fmt.Errorf("%w: MSS flag and value disagree", ErrBadSYN)
	}
	if f&flagWScale != 0 {
		if b[22] > 14 {
			return SYN{}, fmt.Errorf("%w: window scale %d (at most 14)", ErrBadSYN, b[22])
		}
		s.WScale = int8(b[22])
	} else if b[22] != 0 {
		return SYN{}, fmt.Errorf("%w: window scale byte without its flag", ErrBadSYN)
	}
	if err := s.Validate(); err != nil {
		return SYN{}, err
	}
	return s, nil
}

func (s SYN) String() string {
	return fmt.Sprintf("SYN %v→%v isn=%d win=%d mss=%d ws=%d sack=%v ts=%v/%d", s.Src, s.Dst, s.ISN, s.Window, s.MSS, s.WScale, s.SACKOK, s.HasTS, s.TSVal)
}
