package bind

import (
	"errors"
	"fmt"
)

// Probe messages share the UDP socket with WireGuard. They confirm that a
// direct path to a peer works before traffic moves to it, and keep it
// confirmed. Encoding:
//
//	magic   "PVCP"                          4 bytes
//	version 1                               1 byte
//	type    1 ping, 2 pong                  1 byte
//	nonce                                   8 bytes
//	from    length (1 byte) + peer name     1..64 bytes
//	to      length (1 byte) + peer name     1..64 bytes
//	sig     length (1 byte) + signature     1..129 bytes (0 or 64 bytes of signature)
//
// The first byte 'P' (0x50) tells probes apart from WireGuard messages
// (types 1 to 4) and STUN (first two bits zero).
type probe struct {
	pong  bool
	nonce uint64
	from  string
	to    string
	sig   []byte
}

const (
	probeMagic   = "PVCP"
	probeVersion = 1
	maxName      = 63
	maxSig       = 128
)

var errProbe = errors.New("malformed probe")

// signedPart returns the bytes a probe's signature covers: everything
// before the signature field.
func (p *probe) signedPart() []byte {
	b := make([]byte, 0, 16+len(p.from)+len(p.to)+2)
	b = append(b, probeMagic...)
	b = append(b, probeVersion)
	if p.pong {
		b = append(b, 2)
	} else {
		b = append(b, 1)
	}
	for i := 7; i >= 0; i-- {
		b = append(b, byte(p.nonce>>(8*i)))
	}
	b = append(b, byte(len(p.from)))
	b = append(b, p.from...)
	b = append(b, byte(len(p.to)))
	b = append(b, p.to...)
	return b
}

func (p *probe) marshal() ([]byte, error) {
	if len(p.from) == 0 || len(p.from) > maxName || len(p.to) == 0 || len(p.to) > maxName || len(p.sig) > maxSig {
		return nil, fmt.Errorf("%w: field length", errProbe)
	}
	b := p.signedPart()
	b = append(b, byte(len(p.sig)))
	return append(b, p.sig...), nil
}

func isProbe(b []byte) bool { return len(b) >= 4 && string(b[:4]) == probeMagic }

func parseProbe(b []byte) (*probe, error) {
	if !isProbe(b) || len(b) < 4+1+1+8+1 {
		return nil, errProbe
	}
	if b[4] != probeVersion {
		return nil, fmt.Errorf("%w: version %d", errProbe, b[4])
	}
	p := &probe{}
	switch b[5] {
	case 1:
	case 2:
		p.pong = true
	default:
		return nil, fmt.Errorf("%w: type %d", errProbe, b[5])
	}
	for _, c := range b[6:14] {
		p.nonce = p.nonce<<8 | uint64(c)
	}
	rest := b[14:]
	field := func(max int) ([]byte, bool) {
		if len(rest) < 1 || int(rest[0]) > max || len(rest) < 1+int(rest[0]) {
			return nil, false
		}
		f := rest[1 : 1+int(rest[0])]
		rest = rest[1+int(rest[0]):]
		return f, true
	}
	from, ok1 := field(maxName)
	to, ok2 := field(maxName)
	sig, ok3 := field(maxSig)
	if !ok1 || !ok2 || !ok3 || len(from) == 0 || len(to) == 0 || len(rest) != 0 {
		return nil, errProbe
	}
	p.from, p.to = string(from), string(to)
	if len(sig) > 0 {
		p.sig = append([]byte(nil), sig...)
	}
	return p, nil
}
