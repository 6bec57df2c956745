// Package bundle holds the cluster bundle: the public file NAME.cluster
// that a host needs to join a cluster (its name, the master's public key,
// the brokers and their pinned keys, the subnet and the DNS domain), signed
// by the master so that it cannot be altered in transit.
//
// A bundle is a signed.Object of kind KindBundle whose cluster and subject
// are the cluster's name. The master's key signs it and is inside it: a
// host trusts the bundle it was given (out of band) and from then on the
// key inside. Body (big-endian, canonical):
//
//	format   1                                       1 byte
//	master   Ed25519 public key (= the signer)       32 bytes
//	subnet   IPv4 address + prefix length             5 bytes (inside 240.0.0.0/4)
//	domain   length (1 byte) + DNS domain
//	brokers  count (1 byte), then each:
//	         length (1 byte) + HOST:PORT, pinned (1 byte: 0 or 1), key (32 bytes, if pinned)
package bundle

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/pvc-project/pvc/internal/wire"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/name"
	"github.com/pvc-project/pvc/security/signed"
)

// Sentinel errors.
var (
	ErrFormat       = errors.New("malformed cluster bundle")
	ErrBadSignature = errors.New("cluster bundle signature invalid (tampered with)")
	ErrWrongMaster  = errors.New("cluster bundle of another master")
)

// Limits.
const (
	MaxBrokers   = 32
	MaxDomainLen = 253
	MinSubnetLen = 8  // the largest subnet a cluster may have: a /8
	MaxSubnetLen = 24 // the smallest: a /24
)

// FileExt is the extension of bundle files: NAME.cluster.
const FileExt = ".cluster"

const bodyFormat = 1

// Broker is one broker replica of the cluster.
type Broker struct {
	Addr string            // HOST:PORT (host: IP address or DNS name)
	Key  ed25519.PublicKey // pinned broker key, or nil if not pinned
}

// Bundle is a cluster bundle.
type Bundle struct {
	Cluster   string
	MasterKey ed25519.PublicKey
	Subnet    netip.Prefix // IPv4, inside 240.0.0.0/4, masked
	Domain    string       // e.g. "lab.pvc"
	Brokers   []Broker
	Version   uint64

	obj *signed.Object
}

// DefaultDomain returns the default DNS domain of a cluster: CLUSTER.pvc.
func DefaultDomain(cluster string) string { return cluster + ".pvc" }

// CheckSubnet returns nil if p can be a cluster's subnet.
func CheckSubnet(p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("%w: subnet %v is not an IPv4 prefix", ErrFormat, p)
	}
	if p.Masked() != p {
		return fmt.Errorf("%w: subnet %v has host bits set (did you mean %v?)", ErrFormat, p, p.Masked())
	}
	if p.Bits() < cert.Space.Bits() || !cert.Space.Contains(p.Addr()) {
		return fmt.Errorf("%w: subnet %v is not inside %v", ErrFormat, p, cert.Space)
	}
	if p.Bits() < MinSubnetLen || p.Bits() > MaxSubnetLen {
		return fmt.Errorf("%w: subnet %v: prefix length must be between /%d and /%d", ErrFormat, p, MinSubnetLen, MaxSubnetLen)
	}
	return nil
}

// CheckBrokerAddr returns nil if s is a HOST:PORT with a non-zero port.
func CheckBrokerAddr(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || strings.ContainsAny(host, " \t/") {
		return fmt.Errorf("%w: broker %q: want HOST:PORT", ErrFormat, s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("%w: broker %q: bad port", ErrFormat, s)
	}
	if len(s) > 255 {
		return fmt.Errorf("%w: broker address longer than 255 bytes", ErrFormat)
	}
	return nil
}

func (b *Bundle) validate() error {
	if err := name.Check(b.Cluster); err != nil {
		return fmt.Errorf("%w: cluster: %v", ErrFormat, err)
	}
	if len(b.MasterKey) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: master key of %d bytes", ErrFormat, len(b.MasterKey))
	}
	if err := CheckSubnet(b.Subnet); err != nil {
		return err
	}
	if err := CheckDomain(b.Domain); err != nil {
		return err
	}
	if len(b.Brokers) > MaxBrokers {
		return fmt.Errorf("%w: %d brokers, at most %d", ErrFormat, len(b.Brokers), MaxBrokers)
	}
	for _, br := range b.Brokers {
		if err := CheckBrokerAddr(br.Addr); err != nil {
			return err
		}
		if br.Key != nil && len(br.Key) != ed25519.PublicKeySize {
			return fmt.Errorf("%w: broker %s: key of %d bytes", ErrFormat, br.Addr, len(br.Key))
		}
	}
	return nil
}

// CheckDomain returns nil if d is a valid DNS domain for the peers' names.
func CheckDomain(d string) error {
	if d == "" || len(d) > MaxDomainLen {
		return fmt.Errorf("%w: DNS domain %q: want 1 to %d characters", ErrFormat, d, MaxDomainLen)
	}
	for _, label := range strings.Split(d, ".") {
		if err := name.Check(label); err != nil {
			return fmt.Errorf("%w: DNS domain %q: %v", ErrFormat, d, err)
		}
	}
	return nil
}

// Sign validates b and signs it with the master key, whose public half
// becomes b.MasterKey.
func (b *Bundle) Sign(master ed25519.PrivateKey) error {
	b.MasterKey = master.Public().(ed25519.PublicKey)
	if err := b.validate(); err != nil {
		return fmt.Errorf("sign bundle %q: %w", b.Cluster, err)
	}
	var w wire.Writer
	w.U8(bodyFormat)
	w.Raw(b.MasterKey)
	a := b.Subnet.Addr().As4()
	w.Raw(a[:])
	w.U8(uint8(b.Subnet.Bits()))
	w.String8(b.Domain)
	w.U8(uint8(len(b.Brokers)))
	for _, br := range b.Brokers {
		w.String8(br.Addr)
		if br.Key == nil {
			w.U8(0)
		} else {
			w.U8(1)
			w.Raw(br.Key)
		}
	}
	o, err := signed.Sign(signed.KindBundle, b.Cluster, b.Cluster, b.Version, w.B, master)
	if err != nil {
		return fmt.Errorf("sign bundle %q: %w", b.Cluster, err)
	}
	b.obj = o
	return nil
}

// Encode returns the signed encoding (the content of NAME.cluster). It
// panics if b was not signed or decoded.
func (b *Bundle) Encode() []byte { return b.obj.Encode() }

// Object returns the signed envelope (nil before Sign).
func (b *Bundle) Object() *signed.Object { return b.obj }

// Decode parses a bundle strictly and verifies that the master key inside
// signed it. A bundle with a bad signature is refused: use Verify to also
// require a particular master key.
func Decode(data []byte) (*Bundle, error) {
	o, err := signed.DecodeKind(data, signed.KindBundle)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	b, err := parse(o)
	if err != nil {
		return nil, err
	}
	if err := o.Verify(b.MasterKey); err != nil {
		return nil, fmt.Errorf("bundle %q: %w", b.Cluster, ErrBadSignature)
	}
	return b, nil
}

// Verify checks that b is signed by masterPub (a bundle received again,
// e.g. a newer version from a broker, must come from the same master).
func (b *Bundle) Verify(masterPub ed25519.PublicKey) error {
	if !bytes.Equal(b.MasterKey, masterPub) {
		return fmt.Errorf("bundle %q: %w", b.Cluster, ErrWrongMaster)
	}
	if err := b.obj.Verify(masterPub); err != nil {
		return fmt.Errorf("bundle %q: %w", b.Cluster, ErrBadSignature)
	}
	return nil
}

func parse(o *signed.Object) (*Bundle, error) {
	if o.Subject != o.Cluster {
		return nil, fmt.Errorf("%w: subject %q is not the cluster %q", ErrFormat, o.Subject, o.Cluster)
	}
	b := &Bundle{Cluster: o.Cluster, Version: o.Version, obj: o}
	r := wire.NewReader(o.Body)
	if f := r.U8(); r.Err() == nil && f != bodyFormat {
		return nil, fmt.Errorf("%w: unknown body format %d", ErrFormat, f)
	}
	b.MasterKey = bytes.Clone(r.Raw(ed25519.PublicKeySize))
	var a [4]byte
	copy(a[:], r.Raw(4))
	bits := int(r.U8())
	if bits > 32 {
		r.Fail(fmt.Errorf("prefix length %d", bits))
	}
	b.Subnet = netip.PrefixFrom(netip.AddrFrom4(a), bits)
	b.Domain = r.String8(MaxDomainLen)
	n := int(r.U8())
	if n > MaxBrokers {
		return nil, fmt.Errorf("%w: %d brokers, at most %d", ErrFormat, n, MaxBrokers)
	}
	for i := 0; i < n && r.Err() == nil; i++ {
		br := Broker{Addr: r.String8(255)}
		switch p := r.U8(); p {
		case 0:
		case 1:
			br.Key = bytes.Clone(r.Raw(ed25519.PublicKeySize))
		default:
			r.Fail(fmt.Errorf("broker pin flag %d", p))
		}
		b.Brokers = append(b.Brokers, br)
	}
	if err := r.Done(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if !bytes.Equal(b.MasterKey, o.Signer) {
		return nil, fmt.Errorf("%w: master key is not the signer", ErrFormat)
	}
	if err := b.validate(); err != nil {
		return nil, err
	}
	return b, nil
}

// ParseBroker parses HOST:PORT or HOST:PORT=PUBKEY (the key in base64 or
// hex) as given to `pvcd cluster init --broker`.
func ParseBroker(s string) (Broker, error) {
	addr, key, pinned := strings.Cut(s, "=")
	if err := CheckBrokerAddr(addr); err != nil {
		return Broker{}, err
	}
	br := Broker{Addr: addr}
	if pinned {
		k, err := keys.ParsePublic(key)
		if err != nil {
			return Broker{}, fmt.Errorf("broker %s: %w", addr, err)
		}
		br.Key = k
	}
	return br, nil
}

// ChooseSubnet picks a random /bits subnet of 240.0.0.0/4 that overlaps
// none of taken (the subnets of the other clusters this host knows). It
// never picks inside 255.0.0.0/8, whose last address is the broadcast one.
func ChooseSubnet(taken []netip.Prefix, bits int) (netip.Prefix, error) {
	if bits < MinSubnetLen || bits > MaxSubnetLen {
		return netip.Prefix{}, fmt.Errorf("choose subnet: %w: prefix length /%d", ErrFormat, bits)
	}
	n := uint32(15) << (bits - 8) // subnets in 240.0.0.0-254.255.255.255
	start, err := randUint32()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("choose subnet: %w", err)
	}
	for i := uint32(0); i < n; i++ {
		k := (start + i) % n
		base := uint32(240)<<24 + k<<(32-bits)
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(base >> 24), byte(base >> 16), byte(base >> 8), byte(base)}), bits)
		free := true
		for _, t := range taken {
			if t.Overlaps(p) {
				free = false
				break
			}
		}
		if free {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("choose subnet: no free /%d left in %v", bits, cert.Space)
}

func randUint32() (uint32, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b[:]), nil
}
