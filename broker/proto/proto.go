// Package proto is the wire protocol between pvc-broker and its clients
// (peers, enrollees, masters and other broker replicas), shared by both
// sides.
//
// After the TLS 1.3 handshake (ALPN "pvc-broker/1") both sides exchange
// frames: type (1 byte) | length (4 bytes, big-endian) | payload, the payload
// at most MaxPayload bytes. Payloads use the canonical encoding of
// internal/wire: decoding is strict (caps on every length, no trailing
// bytes) and decode-then-encode gives back the input. docs/broker.md is the
// design contract.
package proto

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/pvc-project/pvc/internal/wire"
)

// Version is the protocol version sent in Hello.
const Version = 1

// ALPN is the TLS application protocol of broker sessions.
const ALPN = "pvc-broker/1"

// Limits of the protocol.
const (
	MaxPayload    = 1<<20 + 4<<10 // largest frame payload
	MaxObject     = MaxPayload - 64
	MaxSignal     = 8 << 10  // largest signal payload
	MaxRelay      = 64 << 10 // largest relayed datagram
	MaxText       = 4096     // error texts
	MaxCredential = 64 << 10
	MaxRequest    = 64 << 10 // enrollment request
	MaxName       = 255      // peer and cluster names, subjects, addresses
	MaxObjects    = 4096     // objects in one Objects frame
	MaxInventory  = 1 << 16  // entries in one Inventory frame
	NonceSize     = 32
	IDSize        = 16
	ExporterSize  = 32
	ExporterLabel = "pvc broker auth"
	headerSize    = 5
	authContext   = "pvc broker auth v1"
	signalContext = "pvc signal v1"
)

// Sentinel errors.
var (
	ErrFormat   = errors.New("malformed broker message")
	ErrTooLarge = errors.New("broker frame too large")
	ErrType     = errors.New("unknown broker message type")
)

// Type is a frame type.
type Type uint8

// Frame types. Numbers are part of the protocol: never reuse.
const (
	TypeHello         Type = 1
	TypeChallenge     Type = 2
	TypeAuth          Type = 3
	TypeWelcome       Type = 4
	TypeError         Type = 5
	TypePublish       Type = 6
	TypeAck           Type = 7
	TypeLookup        Type = 8
	TypeObject        Type = 9
	TypeSubscribe     Type = 10
	TypeObjects       Type = 11
	TypeSignal        Type = 12
	TypeRelay         Type = 13
	TypeEnroll        Type = 14
	TypeEnrollForward Type = 15
	TypeEnrollResult  Type = 16
	TypePing          Type = 17
	TypePong          Type = 18
	TypeInventory     Type = 19
	typeEnd           Type = 20
)

var typeNames = [...]string{"", "hello", "challenge", "auth", "welcome", "error", "publish", "ack",
	"lookup", "object", "subscribe", "objects", "signal", "relay", "enroll", "enroll-forward",
	"enroll-result", "ping", "pong", "inventory"}

func (t Type) String() string {
	if t > 0 && t < typeEnd {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Role is what a client is to the broker.
type Role uint8

// Roles.
const (
	RolePeer     Role = 1 // an enrolled peer: authenticates with its certificate
	RoleEnrollee Role = 2 // a host without certificate: may send one Enroll
	RoleMaster   Role = 3 // the cluster's master: answers enrollments, publishes
	RoleReplica  Role = 4 // another broker replica
)

func (r Role) String() string {
	switch r {
	case RolePeer:
		return "peer"
	case RoleEnrollee:
		return "enrollee"
	case RoleMaster:
		return "master"
	case RoleReplica:
		return "replica"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return r >= RolePeer && r <= RoleReplica }

// Message is one decoded frame payload.
type Message interface {
	Type() Type
	encode(w *wire.Writer)
	decode(r *wire.Reader)
}

// Marshal returns the payload encoding of m.
func Marshal(m Message) []byte {
	var w wire.Writer
	m.encode(&w)
	return w.B
}

// Unmarshal decodes the payload of a frame of type t strictly.
func Unmarshal(t Type, payload []byte) (Message, error) {
	m := newMessage(t)
	if m == nil {
		return nil, fmt.Errorf("%w %d", ErrType, uint8(t))
	}
	r := wire.NewReader(payload)
	m.decode(r)
	if err := r.Done(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrFormat, t, err)
	}
	return m, nil
}

func newMessage(t Type) Message {
	switch t {
	case TypeHello:
		return &Hello{}
	case TypeChallenge:
		return &Challenge{}
	case TypeAuth:
		return &Auth{}
	case TypeWelcome:
		return &Welcome{}
	case TypeError:
		return &Error{}
	case TypePublish:
		return &Publish{}
	case TypeAck:
		return &Ack{}
	case TypeLookup:
		return &Lookup{}
	case TypeObject:
		return &Object{}
	case TypeSubscribe:
		return &Subscribe{}
	case TypeObjects:
		return &Objects{}
	case TypeSignal:
		return &Signal{}
	case TypeRelay:
		return &Relay{}
	case TypeEnroll:
		return &Enroll{}
	case TypeEnrollForward:
		return &EnrollForward{}
	case TypeEnrollResult:
		return &EnrollResult{}
	case TypePing:
		return &Ping{}
	case TypePong:
		return &Pong{}
	case TypeInventory:
		return &Inventory{}
	}
	return nil
}

// AppendFrame appends the frame of m (header and payload) to b.
func AppendFrame(b []byte, m Message) []byte {
	start := len(b)
	b = append(b, byte(m.Type()), 0, 0, 0, 0)
	w := wire.Writer{B: b}
	m.encode(&w)
	binary.BigEndian.PutUint32(w.B[start+1:], uint32(len(w.B)-start-headerSize))
	return w.B
}

// AppendObjectsFrame appends the frame of an Objects message holding objs
// to b, as AppendFrame(b, &Objects{Objects: objs}) does, without the
// message (a broker's writer batches queued objects straight into its
// write buffer). The caller keeps len(objs) ≤ MaxObjects and the payload
// ≤ MaxPayload.
func AppendObjectsFrame(b []byte, objs [][]byte) []byte {
	start := len(b)
	b = append(b, byte(TypeObjects), 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(objs)))
	for _, o := range objs {
		b = binary.BigEndian.AppendUint32(b, uint32(len(o)))
		b = append(b, o...)
	}
	binary.BigEndian.PutUint32(b[start+1:], uint32(len(b)-start-headerSize))
	return b
}

// Frame returns the frame of m; ErrTooLarge if its payload exceeds MaxPayload.
func Frame(m Message) ([]byte, error) {
	b := AppendFrame(nil, m)
	if len(b)-headerSize > MaxPayload {
		return nil, fmt.Errorf("%s: %w (%d bytes)", m.Type(), ErrTooLarge, len(b)-headerSize)
	}
	return b, nil
}

// WriteMessage writes m as one frame with a single Write.
func WriteMessage(w io.Writer, m Message) error {
	b, err := Frame(m)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ReadFrame reads one frame: its type and payload (at most MaxPayload bytes).
func ReadFrame(r io.Reader) (Type, []byte, error) { return ReadFrameBuf(r, nil) }

// ReadFrameBuf is ReadFrame reading the payload into buf when it fits (a
// reader's reusable buffer: every decoder copies what it keeps, so a
// message from Unmarshal never refers to the payload).
func ReadFrameBuf(r io.Reader, buf []byte) (Type, []byte, error) {
	t, n, err := ReadHeader(r)
	if err != nil {
		return 0, nil, err
	}
	p := buf[:0]
	if cap(p) < n {
		p = make([]byte, n)
	}
	p = p[:n]
	if err := ReadPayload(r, p); err != nil {
		return 0, nil, err
	}
	return t, p, nil
}

// ReadHeader reads a frame's header: its type and the length of its
// payload (at most MaxPayload). The caller reads the payload with
// ReadPayload, into a buffer of its choice.
func ReadHeader(r io.Reader) (Type, int, error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, 0, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > MaxPayload {
		return 0, 0, fmt.Errorf("%w: %d bytes", ErrTooLarge, n)
	}
	return Type(h[0]), int(n), nil
}

// ReadPayload reads the payload that follows a header, len(p) bytes.
func ReadPayload(r io.Reader, p []byte) error {
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

// ReadRawFrame reads one frame and returns it whole, header and payload
// (at most MaxPayload bytes) in one slice, so that a frame forwarded
// unchanged (relay, signal) need not be encoded again: Unmarshal(Type(f[0]),
// f[HeaderSize:]) decodes it.
func ReadRawFrame(r io.Reader) ([]byte, error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > MaxPayload {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, n)
	}
	f := make([]byte, headerSize+int(n))
	copy(f, h[:])
	if _, err := io.ReadFull(r, f[headerSize:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return f, nil
}

// HeaderSize is the size of a frame's header (type and length).
const HeaderSize = headerSize

// ReadMessage reads and decodes one frame.
func ReadMessage(r io.Reader) (Message, error) {
	t, p, err := ReadFrame(r)
	if err != nil {
		return nil, err
	}
	return Unmarshal(t, p)
}

// AuthMessage is what a client signs in Auth: the context, its role and
// cluster, the broker's nonce and public key and the TLS exporter of the
// session, so that the signature is useless to any other session or broker.
func AuthMessage(role Role, cluster string, nonce []byte, brokerKey ed25519.PublicKey, exporter []byte) []byte {
	var w wire.Writer
	w.String8(authContext)
	w.U8(uint8(role))
	w.String8(cluster)
	w.Bytes8(nonce)
	w.Bytes8(brokerKey)
	w.Bytes8(exporter)
	return w.B
}

// SignalMessage is what the sender of a Signal signs.
func SignalMessage(s *Signal) []byte {
	var w wire.Writer
	w.String8(signalContext)
	w.String8(s.Cluster)
	w.String8(s.From)
	w.String8(s.To)
	w.Raw(s.ID[:])
	w.U8(s.Kind)
	w.Bytes32(s.Payload)
	return w.B
}

// SignSignal fills s.Sig with key's signature.
func SignSignal(s *Signal, key ed25519.PrivateKey) {
	s.Sig = ed25519.Sign(key, SignalMessage(s))
}

// VerifySignal reports whether s carries pub's signature.
func VerifySignal(s *Signal, pub ed25519.PublicKey) bool {
	return len(pub) == ed25519.PublicKeySize && len(s.Sig) == ed25519.SignatureSize &&
		ed25519.Verify(pub, SignalMessage(s), s.Sig)
}
