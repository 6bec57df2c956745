package client

import (
	"crypto/ed25519"
	"sync"

	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/endpoint"
)

// VerifyCache remembers signed objects whose signature verified, keyed by
// the object's exact bytes together with the signer's public key, so that
// the same bytes are not verified twice: the same certificate arriving
// through several brokers, again in a resubscription's snapshot, or, when
// several clients in one process share a cache (simulated peers in tests
// and benchmarks), once per process instead of once per client.
//
// A hit only skips the signature check. Everything that depends on the
// moment or on the view (cluster, validity window, revocation list in
// force, the subnet of the bundle) is checked at every use, and an object
// that fails these checks is verified again in full for the error. A
// different byte anywhere (a broker that tampers) is a different key: the
// map compares whole keys, so a hit is byte-for-byte equality, not a
// digest's. Values are shared between the views that use the cache:
// read-only. It is safe for concurrent use.
type VerifyCache struct {
	max int

	mu sync.Mutex
	m  map[string]cacheEntry // by the object's bytes
}

type cacheEntry struct {
	signer [ed25519.PublicKeySize]byte
	v      any // *cert.Cert or *endpoint.Record
}

// NewVerifyCache returns a cache of at most max entries (0: 65,536). When it
// is full an arbitrary entry makes room.
func NewVerifyCache(max int) *VerifyCache {
	if max <= 0 {
		max = 1 << 16
	}
	return &VerifyCache{max: max, m: map[string]cacheEntry{}}
}

// get returns what was verified for raw under signer, or nil. The lookup
// hashes raw (no copy, no digest).
func (c *VerifyCache) get(signer ed25519.PublicKey, raw []byte) any {
	if c == nil || len(signer) != ed25519.PublicKeySize {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[string(raw)]; ok && e.signer == [ed25519.PublicKeySize]byte(signer) {
		return e.v
	}
	return nil
}

// put remembers v as verified for raw under signer.
func (c *VerifyCache) put(signer ed25519.PublicKey, raw []byte, v any) {
	if c == nil || len(signer) != ed25519.PublicKeySize {
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
	c.m[string(raw)] = cacheEntry{signer: [ed25519.PublicKeySize]byte(signer), v: v}
}

// Len returns the number of entries.
func (c *VerifyCache) Len() int { c.mu.Lock(); defer c.mu.Unlock(); return len(c.m) }

// cert returns the certificate cached for raw under master key mk, or nil.
func (c *VerifyCache) cert(mk ed25519.PublicKey, raw []byte) *cert.Cert {
	ce, _ := c.get(mk, raw).(*cert.Cert)
	return ce
}

// endpoints returns the endpoint record cached for raw under a peer's
// signing key, or nil.
func (c *VerifyCache) endpoints(sk ed25519.PublicKey, raw []byte) *endpoint.Record {
	r, _ := c.get(sk, raw).(*endpoint.Record)
	return r
}
