// Package token holds PVC's enrollment tokens: master-signed permissions to
// join a cluster, limited in uses and time, optionally to names matching a
// pattern, carrying the groups that the admitted peers get. A token prints
// as one copy-pasteable string, "pvc1-" followed by the unpadded base64url
// of its signed encoding.
//
// A token is a signed.Object of kind KindToken whose cluster is the
// cluster's name, subject its random ID (32 hex digits) and version 1. Body
// (big-endian, canonical):
//
//	format    1                               1 byte
//	expires   Unix seconds                    8 bytes
//	uses      how many admissions it allows   4 bytes (>= 1)
//	pattern   length (1 byte) + glob          (path.Match syntax; empty: any name)
//	groups    count (1 byte), then each: length (1 byte) + name (sorted, unique)
//
// The token itself cannot count its uses: the master keeps a Ledger.
package token

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/pvc-project/pvc/internal/wire"
	"github.com/pvc-project/pvc/security/name"
	"github.com/pvc-project/pvc/security/signed"
)

// Sentinel errors.
var (
	ErrFormat       = errors.New("malformed enrollment token")
	ErrWrongSigner  = errors.New("enrollment token signed by another master")
	ErrBadSignature = errors.New("enrollment token signature invalid (tampered with)")
	ErrOtherCluster = errors.New("enrollment token of another cluster")
	ErrExpired      = errors.New("enrollment token expired")
	ErrUsedUp       = errors.New("enrollment token used up")
	ErrName         = errors.New("name not allowed by the enrollment token")
)

// Prefix starts every token string.
const Prefix = "pvc1-"

// Limits.
const (
	MaxGroups     = 64
	MaxPatternLen = 255
	MaxStringLen  = 4096
)

const bodyFormat = 1

// Token is an enrollment token.
type Token struct {
	Cluster     string
	ID          string // 32 hex digits; set by Sign if empty
	Expires     time.Time
	Uses        uint32   // admissions allowed, at least 1
	NamePattern string   // path.Match glob on the peer name; "" allows any
	Groups      []string // given to every peer admitted with it

	obj *signed.Object
}

// NewID returns a random token ID.
func NewID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("token id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

func checkID(id string) error {
	if len(id) != 32 || strings.ToLower(id) != id {
		return fmt.Errorf("%w: ID %q is not 32 lowercase hex digits", ErrFormat, id)
	}
	if _, err := hex.DecodeString(id); err != nil {
		return fmt.Errorf("%w: ID %q is not 32 lowercase hex digits", ErrFormat, id)
	}
	return nil
}

// CheckPattern returns nil if p is a valid name pattern.
func CheckPattern(p string) error {
	if len(p) > MaxPatternLen {
		return fmt.Errorf("%w: name pattern longer than %d", ErrFormat, MaxPatternLen)
	}
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("%w: name pattern %q: %v", ErrFormat, p, err)
	}
	return nil
}

func (t *Token) validate() error {
	if err := name.Check(t.Cluster); err != nil {
		return fmt.Errorf("%w: cluster: %v", ErrFormat, err)
	}
	if err := checkID(t.ID); err != nil {
		return err
	}
	if t.Uses == 0 {
		return fmt.Errorf("%w: zero uses", ErrFormat)
	}
	if err := CheckPattern(t.NamePattern); err != nil {
		return err
	}
	if len(t.Groups) > MaxGroups {
		return fmt.Errorf("%w: %d groups, at most %d", ErrFormat, len(t.Groups), MaxGroups)
	}
	for i, g := range t.Groups {
		if err := name.Check(g); err != nil {
			return fmt.Errorf("%w: group: %v", ErrFormat, err)
		}
		if i > 0 && t.Groups[i-1] >= g {
			return fmt.Errorf("%w: groups not sorted and unique", ErrFormat)
		}
	}
	return nil
}

// Sign validates t (giving it a random ID if it has none, sorting its
// groups) and signs it with the master key.
func (t *Token) Sign(master ed25519.PrivateKey) error {
	if t.ID == "" {
		id, err := NewID()
		if err != nil {
			return err
		}
		t.ID = id
	}
	t.Groups = slices.Compact(slices.Sorted(slices.Values(t.Groups)))
	t.Expires = t.Expires.Truncate(time.Second)
	if err := t.validate(); err != nil {
		return fmt.Errorf("sign token: %w", err)
	}
	var w wire.Writer
	w.U8(bodyFormat)
	w.I64(t.Expires.Unix())
	w.U32(t.Uses)
	w.String8(t.NamePattern)
	w.U8(uint8(len(t.Groups)))
	for _, g := range t.Groups {
		w.String8(g)
	}
	o, err := signed.Sign(signed.KindToken, t.Cluster, t.ID, 1, w.B, master)
	if err != nil {
		return fmt.Errorf("sign token: %w", err)
	}
	t.obj = o
	return nil
}

// Encode returns the signed encoding. It panics if t was not signed or
// decoded.
func (t *Token) Encode() []byte { return t.obj.Encode() }

// String returns the printable form "pvc1-...".
func (t *Token) String() string {
	return Prefix + base64.RawURLEncoding.EncodeToString(t.obj.Encode())
}

// Parse decodes the printable form. Surrounding white space is ignored.
func Parse(s string) (*Token, error) {
	s = strings.TrimSpace(s)
	if len(s) > MaxStringLen {
		return nil, fmt.Errorf("%w: longer than %d characters", ErrFormat, MaxStringLen)
	}
	rest, ok := strings.CutPrefix(s, Prefix)
	if !ok {
		return nil, fmt.Errorf("%w: does not start with %q", ErrFormat, Prefix)
	}
	// Go's base64 decoders skip line breaks, even strict: a token
	// broken across lines would parse and then not be the string given.
	if i := strings.IndexAny(rest, "\r\n"); i >= 0 {
		return nil, fmt.Errorf("%w: a line break at character %d", ErrFormat, len(Prefix)+i+1)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(rest)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url: %v", ErrFormat, err)
	}
	return Decode(b)
}

// Decode parses a signed token strictly. It does not verify it.
func Decode(b []byte) (*Token, error) {
	o, err := signed.DecodeKind(b, signed.KindToken)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if o.Version != 1 {
		return nil, fmt.Errorf("%w: version %d", ErrFormat, o.Version)
	}
	t := &Token{Cluster: o.Cluster, ID: o.Subject, obj: o}
	r := wire.NewReader(o.Body)
	if f := r.U8(); r.Err() == nil && f != bodyFormat {
		return nil, fmt.Errorf("%w: unknown body format %d", ErrFormat, f)
	}
	t.Expires = time.Unix(r.I64(), 0)
	t.Uses = r.U32()
	t.NamePattern = r.String8(MaxPatternLen)
	n := int(r.U8())
	if n > MaxGroups {
		return nil, fmt.Errorf("%w: %d groups", ErrFormat, n)
	}
	for i := 0; i < n && r.Err() == nil; i++ {
		t.Groups = append(t.Groups, r.String8(name.MaxLen))
	}
	if err := r.Done(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if err := t.validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// Verify checks that t was signed by masterPub (ErrWrongSigner,
// ErrBadSignature), is for cluster (ErrOtherCluster) and has not expired at
// now (ErrExpired). Counting uses is the Ledger's job.
func (t *Token) Verify(masterPub ed25519.PublicKey, cluster string, now time.Time) error {
	if t.obj == nil {
		return fmt.Errorf("verify token: %w: not signed", ErrBadSignature)
	}
	if err := t.obj.Verify(masterPub); err != nil {
		if errors.Is(err, signed.ErrWrongSigner) {
			return fmt.Errorf("verify token %s: %w", t.ID, ErrWrongSigner)
		}
		return fmt.Errorf("verify token %s: %w", t.ID, ErrBadSignature)
	}
	if t.Cluster != cluster {
		return fmt.Errorf("verify token %s: %w: %q, want %q", t.ID, ErrOtherCluster, t.Cluster, cluster)
	}
	if !now.Before(t.Expires) {
		return fmt.Errorf("verify token %s: %w on %s", t.ID, ErrExpired, t.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}

// CheckName returns nil if the token allows a peer called n (ErrName).
func (t *Token) CheckName(n string) error {
	if t.NamePattern == "" {
		return nil
	}
	if ok, _ := path.Match(t.NamePattern, n); !ok {
		return fmt.Errorf("%w: %q does not match %q", ErrName, n, t.NamePattern)
	}
	return nil
}

// Object returns the signed envelope (nil before Sign).
func (t *Token) Object() *signed.Object { return t.obj }
