package proto

import (
	"crypto/ed25519"
	"fmt"

	"github.com/pvc-project/pvc/internal/wire"
)

// Hello opens a session (client → broker).
type Hello struct {
	Version uint8
	Role    Role
	Cluster string // empty for a replica
}

// Challenge answers Hello (broker → client).
type Challenge struct {
	Nonce    [NonceSize]byte
	Observed string // the client's address as the broker sees it (HOST:PORT)
}

// Auth proves the client's identity (client → broker).
type Auth struct {
	// Credential: a peer's signed certificate, the master's or a replica's
	// public key, nothing for an enrollee.
	Credential []byte
	Sig        []byte // Ed25519 over AuthMessage; empty for an enrollee
}

// Welcome admits the client (broker → client).
type Welcome struct {
	Session    uint64
	Time       int64        // broker time, Unix nanoseconds
	RelayToken [IDSize]byte // a peer's token for UDP relay datagrams (zero for other roles)
}

// Error refuses something; when it answers Hello or Auth the session closes.
type Error struct {
	Code uint16
	Text string
}

// Error codes.
const (
	CodeRefused     uint16 = 1 // authentication refused
	CodeLimit       uint16 = 2 // a limit was reached
	CodeProtocol    uint16 = 3 // a malformed or unexpected message
	CodeOverflow    uint16 = 4 // the session's outbound queue overflowed
	CodeRevoked     uint16 = 5 // the peer was revoked
	CodeUnavailable uint16 = 6 // no master reachable, no answer in time: try another broker
)

func (e *Error) Error() string { return e.Text }

// Publish offers a signed object (signed.Object encoding) to the broker.
type Publish struct {
	Req    uint32 // echoed in the Ack
	Object []byte
}

// Ack answers Publish (or a Lookup that found nothing).
type Ack struct {
	Req     uint32
	Kind    uint8
	Subject string
	Version uint64 // the version held after the publish
	Err     string // empty on success
}

// Lookup asks for a certificate by peer name or by virtual IP.
type Lookup struct {
	Req uint32
	By  uint8  // LookupName or LookupIP
	Key string // the name, or the IP in text form
}

// Lookup keys.
const (
	LookupName uint8 = 1
	LookupIP   uint8 = 2
)

// Object answers Lookup with a signed object.
type Object struct {
	Req    uint32
	Object []byte
}

// Subscribe asks for the session cluster's objects: a snapshot, then changes.
type Subscribe struct{}

// Objects carries signed objects to a subscriber.
type Objects struct {
	Objects [][]byte
}

// Signal is an opaque, signed message between two peers of a cluster.
type Signal struct {
	Cluster string
	From    string
	To      string
	ID      [IDSize]byte
	Kind    uint8
	Payload []byte
	Sig     []byte // Ed25519 of From's signing key over SignalMessage
}

// Signal kinds (opaque to the broker).
const (
	SignalICE     uint8 = 1 // ICE credentials and candidates
	SignalOffer   uint8 = 2 // path offer
	SignalTTCPSYN uint8 = 3 // Traversing-TCP SYN description
)

// Relay carries one WireGuard datagram between two peers.
type Relay struct {
	Cluster string
	From    string
	To      string
	Data    []byte
}

// Enroll submits an enrollment request (enrollee → broker).
type Enroll struct {
	Request []byte
}

// EnrollForward carries a request to a master (or another replica).
type EnrollForward struct {
	ID      uint64
	Request []byte
}

// EnrollResult answers an enrollment: the certificate or an error text.
type EnrollResult struct {
	ID   uint64
	Cert []byte
	Err  string
}

// Ping is a keepalive; the other side answers Pong with the same nonce.
type Ping struct{ Nonce uint64 }

// Pong answers Ping.
type Pong struct{ Nonce uint64 }

// InvEntry names one object a replica holds.
type InvEntry struct {
	Cluster string
	Kind    uint8
	Subject string
	Version uint64
}

// Inventory lists what a replica holds (anti-entropy).
type Inventory struct {
	Entries []InvEntry
}

func (*Hello) Type() Type         { return TypeHello }
func (*Challenge) Type() Type     { return TypeChallenge }
func (*Auth) Type() Type          { return TypeAuth }
func (*Welcome) Type() Type       { return TypeWelcome }
func (*Error) Type() Type         { return TypeError }
func (*Publish) Type() Type       { return TypePublish }
func (*Ack) Type() Type           { return TypeAck }
func (*Lookup) Type() Type        { return TypeLookup }
func (*Object) Type() Type        { return TypeObject }
func (*Subscribe) Type() Type     { return TypeSubscribe }
func (*Objects) Type() Type       { return TypeObjects }
func (*Signal) Type() Type        { return TypeSignal }
func (*Relay) Type() Type         { return TypeRelay }
func (*Enroll) Type() Type        { return TypeEnroll }
func (*EnrollForward) Type() Type { return TypeEnrollForward }
func (*EnrollResult) Type() Type  { return TypeEnrollResult }
func (*Ping) Type() Type          { return TypePing }
func (*Pong) Type() Type          { return TypePong }
func (*Inventory) Type() Type     { return TypeInventory }

func (m *Hello) encode(w *wire.Writer) { w.U8(m.Version); w.U8(uint8(m.Role)); w.String8(m.Cluster) }
func (m *Hello) decode(r *wire.Reader) {
	m.Version, m.Role, m.Cluster = r.U8(), Role(r.U8()), r.String8(MaxName)
}

func (m *Challenge) encode(w *wire.Writer) { w.Raw(m.Nonce[:]); w.String8(m.Observed) }
func (m *Challenge) decode(r *wire.Reader) {
	copy(m.Nonce[:], r.Raw(NonceSize))
	m.Observed = r.String8(MaxName)
}

func (m *Auth) encode(w *wire.Writer) { w.Bytes32(m.Credential); w.Bytes8(m.Sig) }
func (m *Auth) decode(r *wire.Reader) {
	m.Credential, m.Sig = clone(r.Bytes32(MaxCredential)), clone(r.Bytes8(ed25519.SignatureSize))
	if n := len(m.Sig); n != 0 && n != ed25519.SignatureSize {
		r.Fail(fmt.Errorf("signature of %d bytes", n))
	}
}

func (m *Welcome) encode(w *wire.Writer) { w.U64(m.Session); w.I64(m.Time); w.Raw(m.RelayToken[:]) }
func (m *Welcome) decode(r *wire.Reader) {
	m.Session, m.Time = r.U64(), r.I64()
	copy(m.RelayToken[:], r.Raw(IDSize))
}

func (m *Error) encode(w *wire.Writer) { w.U16(m.Code); w.Bytes32([]byte(m.Text)) }
func (m *Error) decode(r *wire.Reader) { m.Code, m.Text = r.U16(), string(r.Bytes32(MaxText)) }

func (m *Publish) encode(w *wire.Writer) { w.U32(m.Req); w.Bytes32(m.Object) }
func (m *Publish) decode(r *wire.Reader) { m.Req, m.Object = r.U32(), clone(r.Bytes32(MaxObject)) }

func (m *Ack) encode(w *wire.Writer) {
	w.U32(m.Req)
	w.U8(m.Kind)
	w.String8(m.Subject)
	w.U64(m.Version)
	w.Bytes32([]byte(m.Err))
}
func (m *Ack) decode(r *wire.Reader) {
	m.Req, m.Kind, m.Subject, m.Version = r.U32(), r.U8(), r.String8(MaxName), r.U64()
	m.Err = string(r.Bytes32(MaxText))
}

func (m *Lookup) encode(w *wire.Writer) { w.U32(m.Req); w.U8(m.By); w.String8(m.Key) }
func (m *Lookup) decode(r *wire.Reader) {
	m.Req, m.By, m.Key = r.U32(), r.U8(), r.String8(MaxName)
	if r.Err() == nil && m.By != LookupName && m.By != LookupIP {
		r.Fail(fmt.Errorf("lookup by %d", m.By))
	}
}

func (m *Object) encode(w *wire.Writer) { w.U32(m.Req); w.Bytes32(m.Object) }
func (m *Object) decode(r *wire.Reader) { m.Req, m.Object = r.U32(), clone(r.Bytes32(MaxObject)) }

func (m *Subscribe) encode(*wire.Writer) {}
func (m *Subscribe) decode(*wire.Reader) {}

func (m *Objects) encode(w *wire.Writer) {
	w.U32(uint32(len(m.Objects)))
	for _, o := range m.Objects {
		w.Bytes32(o)
	}
}
func (m *Objects) decode(r *wire.Reader) { m.Objects = decodeObjects(nil, r, true) }

// decodeObjects appends the objects to dst[:0] (nil: a new slice).
func decodeObjects(dst [][]byte, r *wire.Reader, copied bool) [][]byte {
	n := r.U32()
	if n > MaxObjects || int(n) > r.Len()/4 {
		r.Fail(fmt.Errorf("%d objects", n))
		return nil
	}
	out := dst[:0]
	if out == nil {
		out = make([][]byte, 0, n)
	}
	for i := uint32(0); i < n && r.Err() == nil; i++ {
		o := r.Bytes32(MaxObject)
		if copied {
			o = clone(o)
		}
		out = append(out, o)
	}
	return out
}

// UnmarshalObjectsBorrowed decodes the payload of an Objects frame as
// Unmarshal does (the same checks), but the objects it returns alias
// payload: they are valid only as long as payload is not reused, and a
// caller copies what it keeps. A subscriber's reader decodes its largest
// and most frequent frames with it, into a buffer it reuses, copying only
// the objects it has not seen (one allocation per new object instead of
// one per object and one per frame). The objects are appended to dst[:0],
// which may be nil: a reader passes the slice of its last frame back.
func UnmarshalObjectsBorrowed(dst [][]byte, payload []byte) ([][]byte, error) {
	r := wire.NewReader(payload)
	objs := decodeObjects(dst, r, false)
	if err := r.Done(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrFormat, TypeObjects, err)
	}
	return objs, nil
}

func (m *Signal) encode(w *wire.Writer) {
	w.String8(m.Cluster)
	w.String8(m.From)
	w.String8(m.To)
	w.Raw(m.ID[:])
	w.U8(m.Kind)
	w.Bytes32(m.Payload)
	w.Raw(pad(m.Sig, ed25519.SignatureSize))
}
func (m *Signal) decode(r *wire.Reader) {
	m.Cluster, m.From, m.To = r.String8(MaxName), r.String8(MaxName), r.String8(MaxName)
	copy(m.ID[:], r.Raw(IDSize))
	m.Kind = r.U8()
	m.Payload = clone(r.Bytes32(MaxSignal))
	m.Sig = clone(r.Raw(ed25519.SignatureSize))
}

func (m *Relay) encode(w *wire.Writer) {
	w.String8(m.Cluster)
	w.String8(m.From)
	w.String8(m.To)
	w.Bytes32(m.Data)
}
func (m *Relay) decode(r *wire.Reader) {
	m.Cluster, m.From, m.To = r.String8(MaxName), r.String8(MaxName), r.String8(MaxName)
	m.Data = clone(r.Bytes32(MaxRelay))
}

func (m *Enroll) encode(w *wire.Writer) { w.Bytes32(m.Request) }
func (m *Enroll) decode(r *wire.Reader) { m.Request = clone(r.Bytes32(MaxRequest)) }

func (m *EnrollForward) encode(w *wire.Writer) { w.U64(m.ID); w.Bytes32(m.Request) }
func (m *EnrollForward) decode(r *wire.Reader) {
	m.ID, m.Request = r.U64(), clone(r.Bytes32(MaxRequest))
}

func (m *EnrollResult) encode(w *wire.Writer) {
	w.U64(m.ID)
	w.Bytes32(m.Cert)
	w.Bytes32([]byte(m.Err))
}
func (m *EnrollResult) decode(r *wire.Reader) {
	m.ID, m.Cert, m.Err = r.U64(), clone(r.Bytes32(MaxObject)), string(r.Bytes32(MaxText))
}

func (m *Ping) encode(w *wire.Writer) { w.U64(m.Nonce) }
func (m *Ping) decode(r *wire.Reader) { m.Nonce = r.U64() }
func (m *Pong) encode(w *wire.Writer) { w.U64(m.Nonce) }
func (m *Pong) decode(r *wire.Reader) { m.Nonce = r.U64() }

func (m *Inventory) encode(w *wire.Writer) {
	w.U32(uint32(len(m.Entries)))
	for _, e := range m.Entries {
		w.String8(e.Cluster)
		w.U8(e.Kind)
		w.String8(e.Subject)
		w.U64(e.Version)
	}
}
func (m *Inventory) decode(r *wire.Reader) {
	n := r.U32()
	if n > MaxInventory || int(n) > r.Len()/11 {
		r.Fail(fmt.Errorf("%d inventory entries", n))
		return
	}
	m.Entries = make([]InvEntry, 0, n)
	for i := uint32(0); i < n && r.Err() == nil; i++ {
		m.Entries = append(m.Entries, InvEntry{Cluster: r.String8(MaxName), Kind: r.U8(),
			Subject: r.String8(MaxName), Version: r.U64()})
	}
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

// pad returns b cut or zero-padded to n bytes (a missing signature encodes
// as zeros and fails verification).
func pad(b []byte, n int) []byte {
	if len(b) == n {
		return b
	}
	out := make([]byte, n)
	copy(out, b)
	return out
}
