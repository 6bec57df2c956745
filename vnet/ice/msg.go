package ice

import (
	"errors"
	"fmt"

	"github.com/pvc-project/pvc/internal/wire"
)

// Message is what two peers' ICE agents exchange through the brokers'
// signalling (opaque to the brokers, signed by the sender). Encoding
// (internal/wire):
//
//	version 1                     u8
//	type    request/offer/answer  u8
//	gen     attempt number        u64 (the offer's; an answer echoes it)
//	ufrag                         string8 (4..255 bytes, offer and answer)
//	pwd                           string8 (22..255 bytes, offer and answer)
//	count                         u8 (≤ MaxCandidates)
//	candidates                    string8 each (RFC 8839 candidate attribute values)
type Message struct {
	Type       MsgType
	Gen        uint64
	Ufrag, Pwd string
	Candidates []string
}

// MsgType is the kind of a Message.
type MsgType uint8

// Message types. Only the controlling peer (the smaller name) offers; the
// other asks it to with a request.
const (
	MsgRequest MsgType = 1
	MsgOffer   MsgType = 2
	MsgAnswer  MsgType = 3
)

const (
	msgVersion = 1
	// MaxCandidates is the most candidates one message carries.
	MaxCandidates = 16
)

// ErrMessage is returned for a malformed message.
var ErrMessage = errors.New("ice: malformed message")

// Marshal encodes m.
func (m *Message) Marshal() ([]byte, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	var w wire.Writer
	w.U8(msgVersion)
	w.U8(uint8(m.Type))
	w.U64(m.Gen)
	w.String8(m.Ufrag)
	w.String8(m.Pwd)
	w.U8(uint8(len(m.Candidates)))
	for _, c := range m.Candidates {
		w.String8(c)
	}
	return w.B, nil
}

func (m *Message) check() error {
	switch m.Type {
	case MsgRequest:
		if m.Ufrag != "" || m.Pwd != "" || len(m.Candidates) != 0 {
			return fmt.Errorf("%w: a request carries no credentials or candidates", ErrMessage)
		}
		return nil
	case MsgOffer, MsgAnswer:
	default:
		return fmt.Errorf("%w: type %d", ErrMessage, m.Type)
	}
	if len(m.Ufrag) < 4 || len(m.Ufrag) > 255 || len(m.Pwd) < 22 || len(m.Pwd) > 255 {
		return fmt.Errorf("%w: ufrag of %d or pwd of %d characters (RFC 8445: ≥ 4 and ≥ 22)", ErrMessage, len(m.Ufrag), len(m.Pwd))
	}
	if len(m.Candidates) > MaxCandidates {
		return fmt.Errorf("%w: %d candidates, at most %d", ErrMessage, len(m.Candidates), MaxCandidates)
	}
	for _, c := range m.Candidates {
		if c == "" || len(c) > 255 {
			return fmt.Errorf("%w: candidate of %d bytes", ErrMessage, len(c))
		}
	}
	return nil
}

// ParseMessage decodes and checks a message.
func ParseMessage(b []byte) (*Message, error) {
	r := wire.NewReader(b)
	if v := r.U8(); r.Err() == nil && v != msgVersion {
		return nil, fmt.Errorf("%w: version %d", ErrMessage, v)
	}
	m := &Message{Type: MsgType(r.U8()), Gen: r.U64(), Ufrag: r.String8(255), Pwd: r.String8(255)}
	n := int(r.U8())
	if n > MaxCandidates {
		return nil, fmt.Errorf("%w: %d candidates, at most %d", ErrMessage, n, MaxCandidates)
	}
	for i := 0; i < n && r.Err() == nil; i++ {
		m.Candidates = append(m.Candidates, r.String8(255))
	}
	if err := r.Done(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMessage, err)
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	return m, nil
}
