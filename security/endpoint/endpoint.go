// Package endpoint holds the endpoint record a peer publishes through the
// brokers: where other peers may try to reach it directly (its host
// addresses, the public address a broker observed, a UPnP-mapped address).
//
// A record is a signed.Object of kind KindEndpoints, signed by the peer's own
// signing key (the one in its certificate), whose cluster is the cluster's
// name, subject the peer's name and version a monotonic counter (Unix
// nanoseconds). Body (big-endian, canonical):
//
//	format     1                                   1 byte
//	count      number of endpoints (at most Max)   1 byte
//	endpoints  each: kind (1 byte), family (1 byte: 4 or 6),
//	           address (4 or 16 bytes), port (2 bytes)
package endpoint

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"

	"github.com/pvc-project/pvc/internal/wire"
	"github.com/pvc-project/pvc/security/signed"
)

// Max is the most endpoints one record may hold.
const Max = 32

const format = 1

// Sentinel errors.
var (
	ErrFormat       = errors.New("malformed endpoint record")
	ErrBadSignature = errors.New("endpoint record not signed by the peer's key")
)

// Kind says how an endpoint was learnt.
type Kind uint8

// Endpoint kinds.
const (
	Host     Kind = 1 // an address of one of the host's interfaces
	Observed Kind = 2 // the public address a broker observed (STUN or TCP)
	UPnP     Kind = 3 // a port mapped on the site's gateway
)

// Endpoint is one candidate address.
type Endpoint struct {
	Kind Kind
	Addr netip.AddrPort
}

// Record is a peer's signed list of endpoints.
type Record struct {
	Cluster   string
	Name      string
	Version   uint64 // Unix nanoseconds when made; higher replaces lower
	Endpoints []Endpoint
	obj       *signed.Object
}

// Sign validates r and signs it with the peer's signing key.
func (r *Record) Sign(key ed25519.PrivateKey) error {
	body, err := EncodeBody(r.Endpoints)
	if err != nil {
		return err
	}
	o, err := signed.Sign(signed.KindEndpoints, r.Cluster, r.Name, r.Version, body, key)
	if err != nil {
		return fmt.Errorf("sign endpoints of %q: %w", r.Name, err)
	}
	r.obj = o
	return nil
}

// Encode returns the signed encoding. It panics if r was not signed or decoded.
func (r *Record) Encode() []byte { return r.obj.Encode() }

// Object returns the signed envelope (nil before Sign).
func (r *Record) Object() *signed.Object { return r.obj }

// Verify checks that r was signed by the peer's signing key (taken from its
// verified certificate).
func (r *Record) Verify(peerSignKey ed25519.PublicKey) error {
	if err := r.obj.Verify(peerSignKey); err != nil {
		return fmt.Errorf("endpoints of %q: %w: %w", r.Name, ErrBadSignature, err)
	}
	return nil
}

// Decode parses a signed record strictly. It does not verify it.
func Decode(b []byte) (*Record, error) {
	o, err := signed.DecodeKind(b, signed.KindEndpoints)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	return FromObject(o)
}

// FromObject parses the body of a decoded envelope of kind KindEndpoints.
func FromObject(o *signed.Object) (*Record, error) {
	if o.Kind != signed.KindEndpoints {
		return nil, fmt.Errorf("%w: a %s", ErrFormat, o.Kind)
	}
	eps, err := DecodeBody(o.Body)
	if err != nil {
		return nil, err
	}
	return &Record{Cluster: o.Cluster, Name: o.Subject, Version: o.Version, Endpoints: eps, obj: o}, nil
}

// EncodeBody returns the body encoding of a list of endpoints.
func EncodeBody(eps []Endpoint) ([]byte, error) {
	if len(eps) > Max {
		return nil, fmt.Errorf("%w: %d endpoints (at most %d)", ErrFormat, len(eps), Max)
	}
	w := wire.Writer{}
	w.U8(format)
	w.U8(uint8(len(eps)))
	for _, e := range eps {
		a := e.Addr.Addr()
		if e.Kind < Host || e.Kind > UPnP || !e.Addr.IsValid() || a.Zone() != "" {
			return nil, fmt.Errorf("%w: endpoint %v (kind %d)", ErrFormat, e.Addr, e.Kind)
		}
		w.U8(uint8(e.Kind))
		if a.Is4() {
			w.U8(4)
			b := a.As4()
			w.Raw(b[:])
		} else {
			w.U8(6)
			b := a.As16()
			w.Raw(b[:])
		}
		w.U16(e.Addr.Port())
	}
	return w.B, nil
}

// DecodeBody parses a body strictly.
func DecodeBody(b []byte) ([]Endpoint, error) {
	r := wire.NewReader(b)
	if f := r.U8(); r.Err() == nil && f != format {
		return nil, fmt.Errorf("%w: format %d", ErrFormat, f)
	}
	n := int(r.U8())
	if n > Max {
		return nil, fmt.Errorf("%w: %d endpoints", ErrFormat, n)
	}
	eps := make([]Endpoint, 0, n)
	for i := 0; i < n && r.Err() == nil; i++ {
		k := Kind(r.U8())
		if r.Err() == nil && (k < Host || k > UPnP) {
			return nil, fmt.Errorf("%w: endpoint kind %d", ErrFormat, k)
		}
		var a netip.Addr
		switch fam := r.U8(); {
		case r.Err() != nil:
		case fam == 4:
			if raw := r.Raw(4); raw != nil { // nil when truncated (the reader's error is set)
				a = netip.AddrFrom4([4]byte(raw))
			}
		case fam == 6:
			raw := r.Raw(16)
			if raw != nil {
				a = netip.AddrFrom16([16]byte(raw))
				if a.Is4In6() {
					return nil, fmt.Errorf("%w: IPv4-mapped address in family 6", ErrFormat)
				}
			}
		default:
			return nil, fmt.Errorf("%w: address family %d", ErrFormat, fam)
		}
		port := r.U16()
		if r.Err() == nil {
			eps = append(eps, Endpoint{Kind: k, Addr: netip.AddrPortFrom(a, port)})
		}
	}
	if err := r.Done(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	return eps, nil
}
