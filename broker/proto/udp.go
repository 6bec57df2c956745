package proto

import (
	"fmt"

	"github.com/pvc-project/pvc/internal/wire"
)

// UDPMagic starts every relay datagram on the broker's UDP port; STUN
// messages are told apart by their magic cookie.
const UDPMagic = "PVCR"

// UDPRelay is a relay datagram on the broker's UDP port:
// "PVCR" | token (16 bytes) | name (1-byte length + bytes) | WireGuard datagram.
//
// From a peer: Token is the sender's relay token (from Welcome, so the
// broker knows who sends and learns its UDP address) and Name the
// destination peer; empty Name and Data register the address. From the
// broker: Token is the receiver's own token (proof that the broker sent it)
// and Name the sender; empty Name and Data confirm a registration.
type UDPRelay struct {
	Token [IDSize]byte
	Name  string
	Data  []byte
}

// IsUDPRelay reports whether a datagram starts with UDPMagic.
func IsUDPRelay(b []byte) bool {
	return len(b) >= len(UDPMagic) && string(b[:len(UDPMagic)]) == UDPMagic
}

// Append appends the datagram's encoding to b.
func (u *UDPRelay) Append(b []byte) []byte {
	w := wire.Writer{B: append(b, UDPMagic...)}
	w.Raw(u.Token[:])
	w.String8(u.Name)
	w.Raw(u.Data)
	return w.B
}

// ParseUDPRelay decodes a relay datagram; Data aliases b.
func ParseUDPRelay(b []byte) (*UDPRelay, error) {
	if !IsUDPRelay(b) {
		return nil, fmt.Errorf("%w: not a relay datagram", ErrFormat)
	}
	r := wire.NewReader(b[len(UDPMagic):])
	u := &UDPRelay{}
	copy(u.Token[:], r.Raw(IDSize))
	u.Name = r.String8(MaxName)
	if err := r.Err(); err != nil {
		return nil, fmt.Errorf("%w: relay datagram: %w", ErrFormat, err)
	}
	u.Data = r.Raw(r.Len())
	if len(u.Data) > MaxRelay {
		return nil, fmt.Errorf("%w: relay datagram of %d bytes", ErrFormat, len(u.Data))
	}
	return u, nil
}
