// Package trust holds what a peer (or a broker) trusts for one cluster: the
// cluster bundle it was given, and the revocation list and global policy in
// force. It verifies certificates against them and accepts a new
// revocation list or policy only when it is signed by the cluster's master
// and newer than the one in force (a broker cannot roll either back).
package trust

import (
	"fmt"
	"sync"
	"time"

	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/policy"
	"github.com/pvc-project/pvc/security/revoke"
)

// Store is the trust state of one cluster. It is safe for concurrent use.
type Store struct {
	bundle *bundle.Bundle

	mu  sync.RWMutex
	rev *revoke.List   // or nil
	pol *policy.Global // or nil
}

// New returns a store that trusts the master of b (decoded, hence
// self-verified, by bundle.Decode).
func New(b *bundle.Bundle) *Store { return &Store{bundle: b} }

// Bundle returns the cluster bundle.
func (s *Store) Bundle() *bundle.Bundle { return s.bundle }

// Revocation returns the revocation list in force, or nil.
func (s *Store) Revocation() *revoke.List {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rev
}

// Policy returns the global policy in force, or nil.
func (s *Store) Policy() *policy.Global {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.pol
}

// SetRevocation verifies a signed revocation list and puts it in force. It
// returns revoke.ErrRollback for a list not newer than the one in force.
func (s *Store) SetRevocation(data []byte) (*revoke.List, error) {
	l, err := revoke.Decode(data)
	if err != nil {
		return nil, err
	}
	if err := l.Verify(s.bundle.MasterKey, s.bundle.Cluster); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := revoke.Newer(s.rev, l); err != nil {
		return nil, err
	}
	s.rev = l
	return l, nil
}

// SetPolicy verifies a signed global policy and puts it in force. It
// returns policy.ErrRollback for a policy not newer than the one in force.
func (s *Store) SetPolicy(data []byte) (*policy.Global, error) {
	g, err := policy.Decode(data)
	if err != nil {
		return nil, err
	}
	if err := g.Verify(s.bundle.MasterKey, s.bundle.Cluster); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := policy.Newer(s.pol, g); err != nil {
		return nil, err
	}
	s.pol = g
	return g, nil
}

// VerifyCert decodes a signed certificate and verifies it: master, cluster,
// validity at now, revocation in force, and its virtual IP inside the
// cluster's subnet.
func (s *Store) VerifyCert(data []byte, now time.Time) (*cert.Cert, error) {
	c, err := cert.Decode(data)
	if err != nil {
		return nil, err
	}
	if err := c.Verify(s.bundle.MasterKey, s.bundle.Cluster, now, s.Revocation()); err != nil {
		return nil, err
	}
	if !s.bundle.Subnet.Contains(c.IP) {
		return nil, fmt.Errorf("verify certificate %q: %w: virtual IP %v outside the cluster subnet %v", c.Name, cert.ErrFormat, c.IP, s.bundle.Subnet)
	}
	return c, nil
}
