// Package sectest holds test helpers shared by the security packages: a
// fixed clock and master key, and the bit-flip attack loop.
package sectest

import (
	"crypto/ed25519"
	"testing"
	"time"
)

// Now is the fixed time of the tests.
var Now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// Key returns a deterministic Ed25519 key from a one-byte seed, so that
// tests name "master A" and "master B" without randomness.
func Key(seed byte) ed25519.PrivateKey {
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = seed
	}
	return ed25519.NewKeyFromSeed(s)
}

// FlipEachBit flips every bit of a valid encoding in turn and requires
// check to return an error for each altered copy.
func FlipEachBit(t *testing.T, valid []byte, check func([]byte) error) {
	t.Helper()
	if err := check(valid); err != nil {
		t.Fatalf("the unaltered encoding fails: %v", err)
	}
	b := make([]byte, len(valid))
	missed := 0
	for i := 0; i < len(valid)*8; i++ {
		copy(b, valid)
		b[i/8] ^= 1 << (i % 8)
		if err := check(b); err == nil {
			missed++
			if missed <= 5 {
				t.Errorf("bit %d (byte %d) flipped: accepted", i, i/8)
			}
		}
	}
	if missed > 0 {
		t.Errorf("%d of %d bit flips accepted", missed, len(valid)*8)
	}
}

// Pub returns the public half of Key(seed).
func Pub(seed byte) ed25519.PublicKey { return Key(seed).Public().(ed25519.PublicKey) }
