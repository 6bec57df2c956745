package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/endpoint"
	"github.com/pvc-project/pvc/security/policy"
	"github.com/pvc-project/pvc/security/revoke"
	"github.com/pvc-project/pvc/security/signed"
	"github.com/pvc-project/pvc/security/trust"
)

// View is a peer's verified picture of its cluster, kept current by the
// brokers' subscriptions: the bundle, revocation list and policy in force,
// the certificates of the other peers and their endpoint records. Every
// object is verified against the master key of the bundle the host was
// given before it enters the view; a broker cannot make it hold a wrong key.
// It is safe for concurrent use.
type View struct {
	now   func() time.Time
	cache *VerifyCache // or nil

	mu        sync.Mutex
	ts        *trust.Store
	certs     map[string]*cert.Cert
	byIP      map[[16]byte]*cert.Cert // by IP (As16: an IPv4 address and its 4in6 form are one key)
	endpoints map[string]*endpoint.Record
	rejected  int
	changed   chan struct{} // closed and replaced at every change
}

// ErrOtherCluster is returned for an object of another cluster.
var ErrOtherCluster = errors.New("object of another cluster")

// NewView returns a view that trusts the master of b.
func NewView(b *bundle.Bundle, now func() time.Time) *View {
	if now == nil {
		now = time.Now
	}
	return &View{now: now, ts: trust.New(b), certs: map[string]*cert.Cert{}, byIP: map[[16]byte]*cert.Cert{},
		endpoints: map[string]*endpoint.Record{}, changed: make(chan struct{})}
}

// Bundle returns the cluster bundle in force.
func (v *View) Bundle() *bundle.Bundle { v.mu.Lock(); defer v.mu.Unlock(); return v.ts.Bundle() }

// Revocation returns the revocation list in force, or nil.
func (v *View) Revocation() *revoke.List { v.mu.Lock(); defer v.mu.Unlock(); return v.ts.Revocation() }

// Policy returns the global policy in force, or nil.
func (v *View) Policy() *policy.Global { v.mu.Lock(); defer v.mu.Unlock(); return v.ts.Policy() }

// Cert returns the verified certificate of a peer, or nil.
func (v *View) Cert(name string) *cert.Cert { v.mu.Lock(); defer v.mu.Unlock(); return v.certs[name] }

// ByIP returns the verified certificate of the peer with a virtual IP, or nil.
func (v *View) ByIP(ip netip.Addr) *cert.Cert {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.byIP[ip.As16()]
}

// Endpoints returns a peer's verified endpoint record, or nil.
func (v *View) Endpoints(name string) *endpoint.Record {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.endpoints[name]
}

// Peers returns the certificates in the view, sorted by name.
func (v *View) Peers() []*cert.Cert {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]*cert.Cert, 0, len(v.certs))
	for _, c := range v.certs {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Len returns the number of certificates in the view (cheaper than
// len(Peers()) in a Wait condition).
func (v *View) Len() int { v.mu.Lock(); defer v.mu.Unlock(); return len(v.certs) }

// Rejected returns how many objects failed verification (a broker sent
// something it should not have).
func (v *View) Rejected() int { v.mu.Lock(); defer v.mu.Unlock(); return v.rejected }

// Changed returns a channel closed at the next change of the view.
func (v *View) Changed() <-chan struct{} { v.mu.Lock(); defer v.mu.Unlock(); return v.changed }

// Wait blocks until cond holds (checked now and at every change) or ctx ends.
func (v *View) Wait(ctx context.Context, cond func(*View) bool) error {
	for {
		ch := v.Changed()
		if cond(v) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

func (v *View) notifyLocked() {
	close(v.changed)
	v.changed = make(chan struct{})
}

// Add verifies a signed object and merges it (highest valid version wins).
// It reports whether the view changed. A rolled-back revocation list or
// policy, or an older version, is not an error: it changes nothing.
func (v *View) Add(raw []byte) (bool, error) {
	n, errs := v.AddAll([][]byte{raw})
	if len(errs) > 0 {
		return n > 0, errs[0]
	}
	return n > 0, nil
}

// AddAll verifies and merges objects in order, as Add does, and notifies
// waiters once. It returns how many changed the view and the errors of
// those refused (each counted in Rejected).
func (v *View) AddAll(raws [][]byte) (int, []error) { return v.addAll(raws, false) }

// addAll is AddAll; borrowed says that raws are valid only during the call
// (a session's read buffer): what the view keeps is copied first.
func (v *View) addAll(raws [][]byte, borrowed bool) (int, []error) {
	now := v.now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(raws) > 64 && len(raws) > len(v.certs) {
		// A snapshot: size the maps once rather than growing them by
		// doubling, object by object.
		certs := make(map[string]*cert.Cert, len(v.certs)+len(raws))
		maps.Copy(certs, v.certs)
		byIP := make(map[[16]byte]*cert.Cert, len(v.byIP)+len(raws))
		maps.Copy(byIP, v.byIP)
		v.certs, v.byIP = certs, byIP
	}
	changed := 0
	var errs []error
	for _, raw := range raws {
		ok, err := v.addLocked(raw, now, borrowed)
		if err != nil {
			v.rejected++
			errs = append(errs, err)
		} else if ok {
			changed++
		}
	}
	if changed > 0 || len(errs) > 0 { // Wait callers may watch Rejected
		v.notifyLocked()
	}
	return changed, errs
}

// addLocked verifies and merges one object. An object identical, byte for
// byte, to the one held changes nothing and is not verified again (it was
// when it entered the view, and what depends on the moment — validity,
// revocation — is enforced by whoever uses the view, as before).
func (v *View) addLocked(raw []byte, now time.Time, borrowed bool) (bool, error) {
	if c := v.cachedCertLocked(raw, now); c != nil {
		return v.mergeCertLocked(c), nil
	}
	if borrowed {
		raw = bytes.Clone(raw) // what is verified below may be kept
	}
	o, err := signed.Decode(raw)
	if err != nil {
		return false, err
	}
	if o.Cluster != v.ts.Bundle().Cluster {
		return false, fmt.Errorf("%s %q: %w", o.Kind, o.Cluster, ErrOtherCluster)
	}
	switch o.Kind {
	case signed.KindBundle:
		cur := v.ts.Bundle()
		if bytes.Equal(cur.Encode(), raw) {
			return false, nil
		}
		b, err := bundle.Decode(raw)
		if err != nil {
			return false, err
		}
		if err := b.Verify(cur.MasterKey); err != nil {
			return false, err
		}
		if b.Version <= cur.Version {
			return false, nil
		}
		ts := trust.New(b)
		if l := v.ts.Revocation(); l != nil {
			ts.SetRevocation(l.Encode())
		}
		if p := v.ts.Policy(); p != nil {
			ts.SetPolicy(p.Encode())
		}
		v.ts = ts
	case signed.KindRevocation:
		if l := v.ts.Revocation(); l != nil && bytes.Equal(l.Encode(), raw) {
			return false, nil
		}
		l, err := v.ts.SetRevocation(raw)
		if errors.Is(err, revoke.ErrRollback) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		for name, c := range v.certs {
			if l.Revoked(c.Serial) {
				v.dropLocked(name)
			}
		}
	case signed.KindPolicy:
		if p := v.ts.Policy(); p != nil && bytes.Equal(p.Encode(), raw) {
			return false, nil
		}
		if _, err := v.ts.SetPolicy(raw); errors.Is(err, policy.ErrRollback) {
			return false, nil
		} else if err != nil {
			return false, err
		}
	case signed.KindCert:
		if cur := v.certs[o.Subject]; cur != nil && bytes.Equal(cur.Encode(), raw) {
			return false, nil
		}
		c, err := v.ts.VerifyCert(raw, now)
		if err != nil {
			return false, err
		}
		if v.cache != nil {
			v.cache.put(v.ts.Bundle().MasterKey, raw, c)
		}
		return v.mergeCertLocked(c), nil
	case signed.KindEndpoints:
		if cur := v.endpoints[o.Subject]; cur != nil && bytes.Equal(cur.Encode(), raw) {
			return false, nil
		}
		c := v.certs[o.Subject]
		if c == nil {
			return false, fmt.Errorf("endpoints of %q: no certificate in view", o.Subject)
		}
		r := v.cache.endpoints(c.SignKey, raw)
		if r == nil {
			if r, err = endpoint.FromObject(o); err != nil {
				return false, err
			}
			if err := r.Verify(c.SignKey); err != nil {
				return false, err
			}
			v.cache.put(c.SignKey, raw, r)
		}
		if cur := v.endpoints[r.Name]; cur != nil && cur.Version >= r.Version {
			return false, nil
		}
		v.endpoints[r.Name] = r
	default:
		return false, fmt.Errorf("unexpected %s from a broker", o.Kind)
	}
	return true, nil
}

// cachedCertLocked returns the certificate raw encodes if the cache holds
// its master signature as verified and it is valid in the view now
// (cluster, validity at now, revocation in force, subnet); else nil, and
// the caller verifies it in full (which also gives the error).
func (v *View) cachedCertLocked(raw []byte, now time.Time) *cert.Cert {
	if v.cache == nil {
		return nil
	}
	b := v.ts.Bundle()
	c := v.cache.cert(b.MasterKey, raw)
	if c == nil {
		return nil
	}
	rev := v.ts.Revocation()
	if c.Cluster == b.Cluster && !now.Before(c.NotBefore) && now.Before(c.NotAfter) &&
		(rev == nil || !rev.Revoked(c.Serial)) && b.Subnet.Contains(c.IP) {
		return c
	}
	return nil
}

// mergeCertLocked puts a verified certificate in the view unless it holds
// the same or a newer one (by serial); it reports whether it did.
func (v *View) mergeCertLocked(c *cert.Cert) bool {
	if cur := v.certs[c.Name]; cur != nil {
		if cur.Serial >= c.Serial {
			return false
		}
		if !cur.SignKey.Equal(c.SignKey) {
			delete(v.endpoints, c.Name) // signed by the old key
		}
		if v.byIP[cur.IP.As16()] == cur {
			delete(v.byIP, cur.IP.As16())
		}
	}
	v.certs[c.Name] = c
	v.byIP[c.IP.As16()] = c
	return true
}

func (v *View) dropLocked(name string) {
	if c := v.certs[name]; c != nil && v.byIP[c.IP.As16()] == c {
		delete(v.byIP, c.IP.As16())
	}
	delete(v.certs, name)
	delete(v.endpoints, name)
}
