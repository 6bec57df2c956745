// Package revoke holds the revocation list: a master-signed, versioned set
// of certificate serials that no peer may accept any more. A list with a
// higher version replaces a lower one; a list not newer than the one in
// force is refused (a broker cannot roll revocations back).
//
// A list is a signed.Object of kind KindRevocation whose cluster and subject
// are the cluster's name and version the list's version. Body (big-endian,
// canonical):
//
//	format   1                                    1 byte
//	count    number of serials                    4 bytes
//	serials  strictly increasing uint64s          8 bytes each
package revoke

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"

	"github.com/pvc-project/pvc/internal/wire"
	"github.com/pvc-project/pvc/security/signed"
)

// Sentinel errors.
var (
	ErrFormat       = errors.New("malformed revocation list")
	ErrWrongSigner  = errors.New("revocation list signed by another master")
	ErrBadSignature = errors.New("revocation list signature invalid (tampered with)")
	ErrOtherCluster = errors.New("revocation list of another cluster")
	ErrRollback     = errors.New("revocation list not newer than the one in force")
)

// MaxSerials is the most serials one list may hold.
const MaxSerials = (signed.MaxBody - 5) / 8

const bodyFormat = 1

// List is a revocation list. The zero value (and nil) revokes nothing.
type List struct {
	Cluster string
	Version uint64
	Serials []uint64 // sorted, unique

	obj *signed.Object
}

// Revoked reports whether serial is in the list. It is safe on a nil list.
func (l *List) Revoked(serial uint64) bool {
	if l == nil {
		return false
	}
	_, ok := slices.BinarySearch(l.Serials, serial)
	return ok
}

// With returns a copy of l with the serials added and the version given;
// the copy is not signed.
func (l *List) With(version uint64, serials ...uint64) *List {
	n := &List{Cluster: l.Cluster, Version: version}
	n.Serials = slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(l.Serials), serials...))))
	return n
}

// Sign signs l with the master key (sorting its serials first).
func (l *List) Sign(master ed25519.PrivateKey) error {
	l.Serials = slices.Compact(slices.Sorted(slices.Values(l.Serials)))
	if len(l.Serials) > MaxSerials {
		return fmt.Errorf("sign revocation list: %w: %d serials, at most %d", ErrFormat, len(l.Serials), MaxSerials)
	}
	w := wire.Writer{B: make([]byte, 0, 5+8*len(l.Serials))}
	w.U8(bodyFormat)
	w.U32(uint32(len(l.Serials)))
	for _, s := range l.Serials {
		w.U64(s)
	}
	o, err := signed.Sign(signed.KindRevocation, l.Cluster, l.Cluster, l.Version, w.B, master)
	if err != nil {
		return fmt.Errorf("sign revocation list: %w", err)
	}
	l.obj = o
	return nil
}

// Encode returns the signed encoding. It panics if l was not signed or
// decoded.
func (l *List) Encode() []byte { return l.obj.Encode() }

// Decode parses a signed list strictly. It does not verify it.
func Decode(b []byte) (*List, error) {
	o, err := signed.DecodeKind(b, signed.KindRevocation)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if o.Subject != o.Cluster {
		return nil, fmt.Errorf("%w: subject %q is not the cluster %q", ErrFormat, o.Subject, o.Cluster)
	}
	l := &List{Cluster: o.Cluster, Version: o.Version, obj: o}
	r := wire.NewReader(o.Body)
	if f := r.U8(); r.Err() == nil && f != bodyFormat {
		return nil, fmt.Errorf("%w: unknown body format %d", ErrFormat, f)
	}
	n := r.U32()
	if r.Err() == nil && uint64(n)*8 != uint64(r.Len()) {
		return nil, fmt.Errorf("%w: count %d does not match %d bytes of serials", ErrFormat, n, r.Len())
	}
	l.Serials = make([]uint64, 0, min(int(n), MaxSerials))
	for i := uint32(0); i < n && r.Err() == nil; i++ {
		s := r.U64()
		if len(l.Serials) > 0 && s <= l.Serials[len(l.Serials)-1] {
			return nil, fmt.Errorf("%w: serials not strictly increasing", ErrFormat)
		}
		l.Serials = append(l.Serials, s)
	}
	if err := r.Done(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	return l, nil
}

// Verify checks that l was signed by masterPub for cluster.
func (l *List) Verify(masterPub ed25519.PublicKey, cluster string) error {
	if l.obj == nil {
		return fmt.Errorf("verify revocation list: %w: not signed", ErrBadSignature)
	}
	if err := l.obj.Verify(masterPub); err != nil {
		if errors.Is(err, signed.ErrWrongSigner) {
			return fmt.Errorf("verify revocation list v%d: %w", l.Version, ErrWrongSigner)
		}
		return fmt.Errorf("verify revocation list v%d: %w", l.Version, ErrBadSignature)
	}
	if l.Cluster != cluster {
		return fmt.Errorf("verify revocation list v%d: %w: %q, want %q", l.Version, ErrOtherCluster, l.Cluster, cluster)
	}
	return nil
}

// Newer returns nil if next may replace cur (cur may be nil): ErrRollback
// if next's version is not higher.
func Newer(cur, next *List) error {
	if cur != nil && next.Version <= cur.Version {
		return fmt.Errorf("revocation list v%d: %w (v%d)", next.Version, ErrRollback, cur.Version)
	}
	return nil
}

// Object returns the signed envelope (nil before Sign).
func (l *List) Object() *signed.Object { return l.obj }
