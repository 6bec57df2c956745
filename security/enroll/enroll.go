// Package enroll holds the enrollment request: what a new host sends (via
// the brokers, or by hand) to ask the master for a certificate. The host
// signs it with its own Ed25519 key, which proves that it holds the private
// half of the signing key it asks to have certified.
//
// A request is a signed.Object of kind KindEnroll signed by the requesting
// peer, whose cluster is the cluster's name, subject the requested peer name
// and version the request time in Unix seconds. Body (big-endian,
// canonical):
//
//	format  1                                   1 byte
//	wg      WireGuard public key                32 bytes
//	nonce   random                              16 bytes
//	token   length (4 bytes) + the token's signed encoding (token.Decode)
package enroll

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/pvc-project/pvc/internal/wire"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/name"
	"github.com/pvc-project/pvc/security/signed"
	"github.com/pvc-project/pvc/security/token"
)

// Sentinel errors.
var (
	ErrFormat       = errors.New("malformed enrollment request")
	ErrBadSignature = errors.New("enrollment request signature invalid (tampered with, or not signed by the key it names)")
)

// MaxTokenLen caps the embedded token.
const MaxTokenLen = 4096

const bodyFormat = 1

// Request is an enrollment request.
type Request struct {
	Cluster string
	Name    string // requested peer name
	WGKey   keys.WGPublic
	SignKey ed25519.PublicKey // the key that signs the request
	Token   *token.Token
	Time    time.Time // when the request was made (seconds)
	Nonce   [16]byte

	obj *signed.Object
}

// New builds and signs a request for cluster with the token and the host's
// keys. now gives the request time.
func New(tok *token.Token, peerName string, wg keys.WGPublic, signKey ed25519.PrivateKey, now time.Time) (*Request, error) {
	r := &Request{Cluster: tok.Cluster, Name: peerName, WGKey: wg, Token: tok, Time: now.Truncate(time.Second)}
	if _, err := rand.Read(r.Nonce[:]); err != nil {
		return nil, fmt.Errorf("enrollment request: %w", err)
	}
	if err := r.Sign(signKey); err != nil {
		return nil, err
	}
	return r, nil
}

// Sign signs r with the peer's signing key (which becomes r.SignKey).
func (r *Request) Sign(key ed25519.PrivateKey) error {
	r.SignKey = key.Public().(ed25519.PublicKey)
	if err := r.validate(); err != nil {
		return fmt.Errorf("sign enrollment request: %w", err)
	}
	var w wire.Writer
	w.U8(bodyFormat)
	w.Raw(r.WGKey[:])
	w.Raw(r.Nonce[:])
	w.Bytes32(r.Token.Encode())
	o, err := signed.Sign(signed.KindEnroll, r.Cluster, r.Name, uint64(r.Time.Unix()), w.B, key)
	if err != nil {
		return fmt.Errorf("sign enrollment request: %w", err)
	}
	r.obj = o
	return nil
}

func (r *Request) validate() error {
	if err := name.Check(r.Name); err != nil {
		return fmt.Errorf("%w: name: %v", ErrFormat, err)
	}
	if r.WGKey.IsZero() {
		return fmt.Errorf("%w: no WireGuard key", ErrFormat)
	}
	if r.Token == nil || r.Token.Object() == nil {
		return fmt.Errorf("%w: no signed token", ErrFormat)
	}
	if r.Token.Cluster != r.Cluster {
		return fmt.Errorf("%w: token of cluster %q in a request for %q", ErrFormat, r.Token.Cluster, r.Cluster)
	}
	if r.Time.Unix() < 0 {
		return fmt.Errorf("%w: time before 1970", ErrFormat)
	}
	return nil
}

// Encode returns the signed encoding. It panics if r was not signed or
// decoded.
func (r *Request) Encode() []byte { return r.obj.Encode() }

// Decode parses a request strictly and verifies its signature against the
// key it names (proof of possession). It does not verify the token: that is
// the master's job.
func Decode(b []byte) (*Request, error) {
	o, err := signed.DecodeKind(b, signed.KindEnroll)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if o.Version > 1<<62 {
		return nil, fmt.Errorf("%w: time out of range", ErrFormat)
	}
	r := &Request{Cluster: o.Cluster, Name: o.Subject, SignKey: o.Signer, Time: time.Unix(int64(o.Version), 0), obj: o}
	rd := wire.NewReader(o.Body)
	if f := rd.U8(); rd.Err() == nil && f != bodyFormat {
		return nil, fmt.Errorf("%w: unknown body format %d", ErrFormat, f)
	}
	copy(r.WGKey[:], rd.Raw(keys.Size))
	copy(r.Nonce[:], rd.Raw(16))
	tb := rd.Bytes32(MaxTokenLen)
	if err := rd.Done(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if r.Token, err = token.Decode(tb); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	if err := o.VerifySelf(); err != nil {
		return nil, fmt.Errorf("enrollment request for %q: %w", r.Name, ErrBadSignature)
	}
	return r, nil
}

// Object returns the signed envelope (nil before Sign).
func (r *Request) Object() *signed.Object { return r.obj }
