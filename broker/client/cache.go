package client

import (
	"crypto/ed25519"
	"crypto/sha256"
	"sync"

	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/endpoint"
)

// VerifyCache remembers signed objects whose signature verified, keyed by
// the SHA-256 of the signer's public key and the object's exact bytes, so
// that the same bytes are not verified twice: the same certificate arriving
// through several brokers, again in a resubscription's snapshot, or, when
// several clients in one process share a cache (simulated peers in tests
// and benchmarks), once per process instead of once per client.
//
// A hit only skips the signature check. Everything that depends on the
// moment or on the view (cluster, validity window, revocation list in
// force, the subnet of the bundle) is checked at every use, and an object
// that fails these checks is verified again in full for the error. A
// different byte anywhere (a broker that tampers) is a different key.
// Values are shared between the views that use the cache: read-only.
// It is safe for concurrent use.
type VerifyCache struct {
	max int

	mu sync.Mutex
	m  map[[sha256.Size]byte]any
}

// NewVerifyCache returns a cache of at most max entries (0: 65,536). When it
// is full an arbitrary entry makes room.
func NewVerifyCache(max int) *VerifyCache {
	if max <= 0 {
		max = 1 << 16
	}
	return &VerifyCache{max: max, m: map[[sha256.Size]byte]any{}}
}

func cacheKey(signer ed25519.PublicKey, raw []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write(signer)
	h.Write(raw)
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

func (c *VerifyCache) get(k [sha256.Size]byte) any {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[k]
}

func (c *VerifyCache) put(k [sha256.Size]byte, v any) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		for old := range c.m {
			delete(c.m, old)
			break
		}
	}
	c.m[k] = v
}

// Len returns the number of entries.
func (c *VerifyCache) Len() int { c.mu.Lock(); defer c.mu.Unlock(); return len(c.m) }

// cert returns the certificate cached for raw under master key mk, or nil.
func (c *VerifyCache) cert(mk ed25519.PublicKey, raw []byte) (*cert.Cert, [sha256.Size]byte) {
	if c == nil {
		return nil, [sha256.Size]byte{}
	}
	k := cacheKey(mk, raw)
	ce, _ := c.get(k).(*cert.Cert)
	return ce, k
}

// endpoints returns the endpoint record cached for raw under a peer's
// signing key, or nil.
func (c *VerifyCache) endpoints(sk ed25519.PublicKey, raw []byte) (*endpoint.Record, [sha256.Size]byte) {
	if c == nil {
		return nil, [sha256.Size]byte{}
	}
	k := cacheKey(sk, raw)
	r, _ := c.get(k).(*endpoint.Record)
	return r, k
}
