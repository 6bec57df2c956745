// Package keys holds the key material of PVC: the master's and the peers'
// Ed25519 signing keys and the peers' WireGuard (X25519) static keys, their
// text forms, and the key files (written 0600 atomically, refused when
// group- or world-accessible).
//
// Private keys are generated on the host that uses them and never leave it.
// Public keys print as standard base64 (the form of the wg tool); parsers
// also accept 64 hex digits, the form of wireguard-go's IpcSet.
package keys

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors; the functions wrap them with the operation and the file.
var (
	// ErrLoosePermissions: a private key file is readable or writable by
	// its group or by others.
	ErrLoosePermissions = errors.New("key file permissions too open")
	// ErrBadKeyFile: the file is not a key file of the expected kind.
	ErrBadKeyFile = errors.New("not a valid key file")
	// ErrBadKey: a key in text form cannot be parsed.
	ErrBadKey = errors.New("bad key")
)

// Size is the size of every public key (Ed25519 and X25519) and of a
// WireGuard private key.
const Size = 32

// WGPrivate is a WireGuard static private key (X25519).
type WGPrivate [Size]byte

// WGPublic is a WireGuard static public key (X25519).
type WGPublic [Size]byte

// NewWG generates a WireGuard static key pair.
func NewWG() (WGPrivate, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return WGPrivate{}, fmt.Errorf("generate wireguard key: %w", err)
	}
	var p WGPrivate
	copy(p[:], k.Bytes())
	return p, nil
}

// Public returns the public key of k.
func (k WGPrivate) Public() WGPublic {
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil { // cannot happen: every 32-byte string is an X25519 key
		panic(err)
	}
	var p WGPublic
	copy(p[:], priv.PublicKey().Bytes())
	return p
}

// Hex returns k in the hex form of wireguard-go's IpcSet (private_key=).
func (k WGPrivate) Hex() string { return hex.EncodeToString(k[:]) }

// Hex returns k in the hex form of wireguard-go's IpcSet (public_key=).
func (k WGPublic) Hex() string { return hex.EncodeToString(k[:]) }

// String returns k in standard base64 (the form of the wg tool).
func (k WGPublic) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is all zero (unset).
func (k WGPublic) IsZero() bool { return k == WGPublic{} }

// ParseWGPublic parses a WireGuard public key in base64 or hex.
func ParseWGPublic(s string) (WGPublic, error) {
	b, err := parse32(s)
	if err != nil {
		return WGPublic{}, fmt.Errorf("wireguard public key: %w", err)
	}
	var k WGPublic
	copy(k[:], b)
	if k.IsZero() {
		return WGPublic{}, fmt.Errorf("wireguard public key: %w: all zero", ErrBadKey)
	}
	return k, nil
}

// NewSigning generates an Ed25519 signing key pair.
func NewSigning() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate signing key: %w", err)
	}
	return priv, nil
}

// FormatPublic returns an Ed25519 public key in standard base64.
func FormatPublic(k ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(k) }

// ParsePublic parses an Ed25519 public key in base64 or hex.
func ParsePublic(s string) (ed25519.PublicKey, error) {
	b, err := parse32(s)
	if err != nil {
		return nil, fmt.Errorf("signing public key: %w", err)
	}
	return ed25519.PublicKey(b), nil
}

// parse32 decodes 32 bytes from standard base64, unpadded base64url or hex.
func parse32(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	var b []byte
	var err error
	switch len(s) {
	case 2 * Size:
		b, err = hex.DecodeString(s)
	case 44:
		b, err = base64.StdEncoding.Strict().DecodeString(s)
	case 43:
		b, err = base64.RawURLEncoding.Strict().DecodeString(s)
	default:
		return nil, fmt.Errorf("%w: %q is %d characters, want 44 (base64) or 64 (hex)", ErrBadKey, short(s), len(s))
	}
	if err != nil || len(b) != Size {
		return nil, fmt.Errorf("%w: %q is neither base64 nor hex of 32 bytes", ErrBadKey, short(s))
	}
	return b, nil
}

func short(s string) string {
	if len(s) > 20 {
		return s[:20] + "..."
	}
	return s
}
