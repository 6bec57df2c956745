// Package signed holds the envelope that every signed object of PVC uses:
// certificates, cluster bundles, enrollment tokens, revocation lists, global
// policies (all signed by the master) and enrollment requests (signed by the
// requesting peer).
//
// The broker stores and verifies envelopes without understanding their
// bodies: each carries its kind, its cluster, a subject (a peer name for a
// certificate, the cluster name for cluster-wide objects) and a version, so
// that replicas merge by "highest valid version wins" per (cluster, kind,
// subject).
//
// Encoding (big-endian, no padding; canonical, so decode-then-encode gives
// back the input):
//
//	magic    "PVC" and the format version 1         4 bytes
//	kind     Kind                                   1 byte
//	cluster  length (1 byte) + name                 1..64 bytes
//	subject  length (1 byte) + bytes                1..256 bytes
//	version  uint64                                 8 bytes
//	signer   Ed25519 public key                     32 bytes
//	body     length (4 bytes) + body                4..4+MaxBody bytes
//	sig      Ed25519 signature                      64 bytes
//
// The signature covers a domain-separated message: "PVC signed object v1 "
// + the kind's name + a zero byte + every byte of the encoding before the
// signature. A signature of one kind can therefore never be replayed as
// another kind, nor as anything else that Ed25519 keys sign.
package signed

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"

	"github.com/pvc-project/pvc/internal/wire"
	"github.com/pvc-project/pvc/security/name"
)

// Kind names what an envelope holds.
type Kind uint8

// The kinds of signed objects. Numbers are part of the format: never reuse.
const (
	KindCert       Kind = 1 // peer certificate; subject: peer name; version: serial
	KindBundle     Kind = 2 // cluster bundle; subject: cluster name
	KindToken      Kind = 3 // enrollment token; subject: token ID (hex)
	KindRevocation Kind = 4 // revocation list; subject: cluster name
	KindPolicy     Kind = 5 // global policy; subject: cluster name
	KindEnroll     Kind = 6 // enrollment request (signed by the peer); subject: requested name
	KindEndpoints  Kind = 7 // a peer's candidate endpoints (signed by the peer); subject: peer name; version: Unix ns
)

var kindNames = [...]string{
	KindCert:       "cert",
	KindBundle:     "bundle",
	KindToken:      "token",
	KindRevocation: "revocation",
	KindPolicy:     "policy",
	KindEnroll:     "enroll-request",
	KindEndpoints:  "endpoints",
}

// String returns the kind's name, the one in the signed context.
func (k Kind) String() string {
	if k.Valid() {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return int(k) < len(kindNames) && kindNames[k] != "" }

// Sizes and caps.
const (
	MaxBody    = 1 << 20 // largest body
	MaxSubject = 255     // longest subject
	MaxSize    = 4 + 1 + 1 + name.MaxLen + 1 + MaxSubject + 8 + ed25519.PublicKeySize + 4 + MaxBody + ed25519.SignatureSize
)

var magic = []byte("PVC\x01")

// Sentinel errors.
var (
	ErrFormat       = errors.New("malformed signed object")
	ErrKind         = errors.New("wrong kind of signed object")
	ErrWrongSigner  = errors.New("signed by another key")
	ErrBadSignature = errors.New("bad signature (object tampered with)")
)

// Object is one signed object. Decode and Sign fill every field; the zero
// value is not valid.
type Object struct {
	Kind    Kind
	Cluster string // the cluster's name
	Subject string // what the object is about (see Kind)
	Version uint64 // higher replaces lower for the same (Cluster, Kind, Subject)
	Signer  ed25519.PublicKey
	Body    []byte
	Sig     []byte

	raw []byte // the whole encoding
}

// Sign builds a signed object. Body is copied.
func Sign(kind Kind, cluster, subject string, version uint64, body []byte, key ed25519.PrivateKey) (*Object, error) {
	o := &Object{Kind: kind, Cluster: cluster, Subject: subject, Version: version,
		Signer: key.Public().(ed25519.PublicKey), Body: bytes.Clone(body)}
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("sign %s: %w", kind, err)
	}
	w := wire.Writer{B: make([]byte, 0, MaxSize-MaxBody+len(body))}
	o.encodeUnsigned(&w)
	o.Sig = ed25519.Sign(key, message(kind, w.B))
	w.Raw(o.Sig)
	o.raw = w.B
	return o, nil
}

func (o *Object) check() error {
	switch {
	case !o.Kind.Valid():
		return fmt.Errorf("%w: unknown kind %d", ErrFormat, o.Kind)
	case name.Check(o.Cluster) != nil:
		return fmt.Errorf("%w: cluster: %v", ErrFormat, name.Check(o.Cluster))
	case len(o.Subject) == 0 || len(o.Subject) > MaxSubject:
		return fmt.Errorf("%w: subject of %d bytes", ErrFormat, len(o.Subject))
	case len(o.Body) > MaxBody:
		return fmt.Errorf("%w: body of %d bytes, at most %d", ErrFormat, len(o.Body), MaxBody)
	}
	return nil
}

func (o *Object) encodeUnsigned(w *wire.Writer) {
	w.Raw(magic)
	w.U8(uint8(o.Kind))
	w.String8(o.Cluster)
	w.String8(o.Subject)
	w.U64(o.Version)
	w.Raw(o.Signer)
	w.Bytes32(o.Body)
}

// message is what the signature covers.
func message(kind Kind, unsigned []byte) []byte {
	ctx := "PVC signed object v1 " + kind.String() + "\x00"
	m := make([]byte, 0, len(ctx)+len(unsigned))
	return append(append(m, ctx...), unsigned...)
}

// Encode returns the object's encoding. The caller must not modify it.
func (o *Object) Encode() []byte { return o.raw }

// Decode parses an encoding strictly (exact lengths, known kind, valid
// cluster name, no trailing bytes). It does not verify the signature; the
// returned object aliases nothing in b.
func Decode(b []byte) (*Object, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrFormat, len(b), MaxSize)
	}
	b = bytes.Clone(b)
	r := wire.NewReader(b)
	if m := r.Raw(len(magic)); r.Err() == nil && !bytes.Equal(m, magic) {
		return nil, fmt.Errorf("%w: not a PVC signed object (or an unknown format version)", ErrFormat)
	}
	o := &Object{raw: b}
	o.Kind = Kind(r.U8())
	o.Cluster = r.String8(name.MaxLen)
	o.Subject = r.String8(MaxSubject)
	o.Version = r.U64()
	o.Signer = ed25519.PublicKey(r.Raw(ed25519.PublicKeySize))
	o.Body = r.Bytes32(MaxBody)
	o.Sig = r.Raw(ed25519.SignatureSize)
	if err := r.Done(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	return o, nil
}

// DecodeKind is Decode that also requires the kind.
func DecodeKind(b []byte, kind Kind) (*Object, error) {
	o, err := Decode(b)
	if err != nil {
		return nil, err
	}
	if o.Kind != kind {
		return nil, fmt.Errorf("decode %s: %w: got a %s", kind, ErrKind, o.Kind)
	}
	return o, nil
}

// VerifySelf checks the signature against the signer key that the object
// names. Use it only where the signer is itself what is being proved (an
// enrollment request proves possession of its key; a bundle is trusted
// on first use); everywhere else use Verify with the key you trust.
func (o *Object) VerifySelf() error {
	if !ed25519.Verify(o.Signer, message(o.Kind, o.raw[:len(o.raw)-ed25519.SignatureSize]), o.Sig) {
		return fmt.Errorf("verify %s %q: %w", o.Kind, o.Subject, ErrBadSignature)
	}
	return nil
}

// Verify checks that the object was signed by key: ErrWrongSigner if it
// names another signer, ErrBadSignature if the signature does not match.
func (o *Object) Verify(key ed25519.PublicKey) error {
	if !bytes.Equal(o.Signer, key) {
		return fmt.Errorf("verify %s %q: %w", o.Kind, o.Subject, ErrWrongSigner)
	}
	return o.VerifySelf()
}
