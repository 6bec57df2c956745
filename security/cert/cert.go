// Package cert holds PVC's peer certificate: the master's signature over a
// peer's name, virtual IP, WireGuard and signing public keys, groups, serial
// and validity window. Before a peer is added to the data plane its
// certificate must Verify against the cluster bundle's master key.
//
// A certificate is a signed.Object of kind KindCert whose cluster is the
// cluster's name, subject the peer's name and version its serial. The body
// (big-endian, canonical):
//
//	format     1                               1 byte
//	ip         IPv4 virtual address            4 bytes (in 240.0.0.0/4)
//	wg         WireGuard public key            32 bytes
//	sign       Ed25519 public key              32 bytes
//	notBefore  Unix seconds                    8 bytes
//	notAfter   Unix seconds                    8 bytes
//	groups     count (1 byte), then each: length (1 byte) + name
//
// Groups follow the name rule and are strictly increasing (sorted, unique).
package cert

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/pvc-project/pvc/internal/wire"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/name"
	"github.com/pvc-project/pvc/security/signed"
)

// Sentinel errors of Verify and Decode; each is wrapped with the
// certificate's name.
var (
	ErrFormat       = errors.New("malformed certificate")
	ErrWrongSigner  = errors.New("certificate signed by another master")
	ErrBadSignature = errors.New("certificate signature invalid (tampered with)")
	ErrOtherCluster = errors.New("certificate of another cluster")
	ErrExpired      = errors.New("certificate expired")
	ErrNotYetValid  = errors.New("certificate not yet valid")
	ErrRevoked      = errors.New("certificate revoked")
)

// Space is the address block of every virtual IP.
var Space = netip.MustParsePrefix("240.0.0.0/4")

// MaxGroups is the most groups a certificate can name.
const MaxGroups = 64

const bodyFormat = 1

// Revocation tells whether a serial is revoked (revoke.List implements it).
type Revocation interface {
	Revoked(serial uint64) bool
}

// Cert is a peer certificate.
type Cert struct {
	Cluster   string
	Name      string
	IP        netip.Addr // in 240.0.0.0/4 and in the cluster's subnet
	WGKey     keys.WGPublic
	SignKey   ed25519.PublicKey
	Groups    []string // sorted, unique
	Serial    uint64   // unique in the cluster; also the envelope's version
	NotBefore time.Time
	NotAfter  time.Time

	obj *signed.Object // set by Sign and Decode
}

// Sign validates c, sorts its groups and signs it with the master key.
func (c *Cert) Sign(master ed25519.PrivateKey) error {
	c.Groups = slices.Compact(slices.Sorted(slices.Values(c.Groups)))
	c.NotBefore = c.NotBefore.Truncate(time.Second)
	c.NotAfter = c.NotAfter.Truncate(time.Second)
	if err := c.validate(); err != nil {
		return fmt.Errorf("sign certificate %q: %w", c.Name, err)
	}
	o, err := signed.Sign(signed.KindCert, c.Cluster, c.Name, c.Serial, c.body(), master)
	if err != nil {
		return fmt.Errorf("sign certificate %q: %w", c.Name, err)
	}
	c.obj = o
	return nil
}

func (c *Cert) validate() error {
	if err := name.Check(c.Cluster); err != nil {
		return fmt.Errorf("%w: cluster: %v", ErrFormat, err)
	}
	if err := name.Check(c.Name); err != nil {
		return fmt.Errorf("%w: name: %v", ErrFormat, err)
	}
	if !c.IP.Is4() || !Space.Contains(c.IP) {
		return fmt.Errorf("%w: virtual IP %v is not in %v", ErrFormat, c.IP, Space)
	}
	if c.WGKey.IsZero() {
		return fmt.Errorf("%w: no WireGuard key", ErrFormat)
	}
	if len(c.SignKey) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: signing key of %d bytes", ErrFormat, len(c.SignKey))
	}
	if len(c.Groups) > MaxGroups {
		return fmt.Errorf("%w: %d groups, at most %d", ErrFormat, len(c.Groups), MaxGroups)
	}
	for i, g := range c.Groups {
		if err := name.Check(g); err != nil {
			return fmt.Errorf("%w: group: %v", ErrFormat, err)
		}
		if i > 0 && c.Groups[i-1] >= g {
			return fmt.Errorf("%w: groups not sorted and unique", ErrFormat)
		}
	}
	if !c.NotAfter.After(c.NotBefore) {
		return fmt.Errorf("%w: not-after %v is not after not-before %v", ErrFormat, c.NotAfter, c.NotBefore)
	}
	return nil
}

func (c *Cert) body() []byte {
	var w wire.Writer
	w.U8(bodyFormat)
	ip := c.IP.As4()
	w.Raw(ip[:])
	w.Raw(c.WGKey[:])
	w.Raw(c.SignKey)
	w.I64(c.NotBefore.Unix())
	w.I64(c.NotAfter.Unix())
	w.U8(uint8(len(c.Groups)))
	for _, g := range c.Groups {
		w.String8(g)
	}
	return w.B
}

// Encode returns the signed encoding. It panics if c was not signed or
// decoded.
func (c *Cert) Encode() []byte { return c.obj.Encode() }

// Object returns the signed envelope (nil before Sign).
func (c *Cert) Object() *signed.Object { return c.obj }

// Decode parses a signed certificate strictly. It does not verify it.
func Decode(b []byte) (*Cert, error) {
	o, err := signed.DecodeKind(b, signed.KindCert)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	return FromObject(o)
}

// FromObject parses the body of a decoded envelope of kind KindCert.
func FromObject(o *signed.Object) (*Cert, error) {
	if o.Kind != signed.KindCert {
		return nil, fmt.Errorf("%w: a %s, not a certificate", ErrFormat, o.Kind)
	}
	c := &Cert{Cluster: o.Cluster, Name: o.Subject, Serial: o.Version, obj: o}
	r := wire.NewReader(o.Body)
	if f := r.U8(); r.Err() == nil && f != bodyFormat {
		return nil, fmt.Errorf("%w: unknown body format %d", ErrFormat, f)
	}
	c.IP = netip.AddrFrom4([4]byte(pad(r.Raw(4), 4)))
	copy(c.WGKey[:], r.Raw(keys.Size))
	c.SignKey = bytes.Clone(r.Raw(ed25519.PublicKeySize))
	c.NotBefore = time.Unix(r.I64(), 0)
	c.NotAfter = time.Unix(r.I64(), 0)
	n := int(r.U8())
	if n > MaxGroups {
		return nil, fmt.Errorf("%w: %d groups, at most %d", ErrFormat, n, MaxGroups)
	}
	for i := 0; i < n && r.Err() == nil; i++ {
		c.Groups = append(c.Groups, r.String8(name.MaxLen))
	}
	if err := r.Done(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// pad returns b, or n zero bytes if b is short (after a reader error).
func pad(b []byte, n int) []byte {
	if len(b) < n {
		return make([]byte, n)
	}
	return b
}

// Verify checks, in this order, that the certificate was signed by
// masterPub (ErrWrongSigner, ErrBadSignature), belongs to cluster
// (ErrOtherCluster), is valid at now (ErrNotYetValid, ErrExpired) and is not
// revoked (ErrRevoked; rev may be nil).
func (c *Cert) Verify(masterPub ed25519.PublicKey, cluster string, now time.Time, rev Revocation) error {
	if c.obj == nil {
		return fmt.Errorf("verify certificate %q: %w: not signed", c.Name, ErrBadSignature)
	}
	if err := c.obj.Verify(masterPub); err != nil {
		if errors.Is(err, signed.ErrWrongSigner) {
			return fmt.Errorf("verify certificate %q: %w", c.Name, ErrWrongSigner)
		}
		return fmt.Errorf("verify certificate %q: %w", c.Name, ErrBadSignature)
	}
	return c.CheckValid(cluster, now, rev)
}

// CheckValid does what Verify does after the signature: cluster, validity
// period, revocation. For a certificate whose signature was verified
// before (the same object): a peer's view calls it at every change.
func (c *Cert) CheckValid(cluster string, now time.Time, rev Revocation) error {
	if c.Cluster != cluster {
		return fmt.Errorf("verify certificate %q: %w: %q, want %q", c.Name, ErrOtherCluster, c.Cluster, cluster)
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("verify certificate %q: %w: valid from %s", c.Name, ErrNotYetValid, c.NotBefore.UTC().Format(time.RFC3339))
	}
	if !now.Before(c.NotAfter) {
		return fmt.Errorf("verify certificate %q: %w: on %s", c.Name, ErrExpired, c.NotAfter.UTC().Format(time.RFC3339))
	}
	if rev != nil && rev.Revoked(c.Serial) {
		return fmt.Errorf("verify certificate %q: %w: serial %d", c.Name, ErrRevoked, c.Serial)
	}
	return nil
}

// InGroup reports whether the certificate names group g.
func (c *Cert) InGroup(g string) bool {
	_, ok := slices.BinarySearch(c.Groups, g)
	return ok
}
