package client

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
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
	certs     []*cert.Cert            // sorted by name, one per name
	pending   []*cert.Cert            // verified in the batch being added, merged by flushLocked
	byIP      map[[16]byte]*cert.Cert // by IP (As16: an IPv4 address and its 4in6 form are one key); nil until the first ByIP
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
	return &View{now: now, ts: trust.New(b),
		endpoints: map[string]*endpoint.Record{}, changed: make(chan struct{})}
}

// Bundle returns the cluster bundle in force.
func (v *View) Bundle() *bundle.Bundle { v.mu.Lock(); defer v.mu.Unlock(); return v.ts.Bundle() }

// Revocation returns the revocation list in force, or nil.
func (v *View) Revocation() *revoke.List { v.mu.Lock(); defer v.mu.Unlock(); return v.ts.Revocation() }

// Policy returns the global policy in force, or nil.
func (v *View) Policy() *policy.Global { v.mu.Lock(); defer v.mu.Unlock(); return v.ts.Policy() }

// Cert returns the verified certificate of a peer, or nil.
func (v *View) Cert(name string) *cert.Cert {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.certLocked(name)
}

func (v *View) certLocked(name string) *cert.Cert {
	if i, ok := v.findLocked(name); ok {
		return v.certs[i]
	}
	return nil
}

// findLocked returns where the certificate of name is in v.certs, or
// where it would go, and whether it is there.
func (v *View) findLocked(name string) (int, bool) {
	return slices.BinarySearchFunc(v.certs, name, func(c *cert.Cert, name string) int { return strings.Compare(c.Name, name) })
}

// ByIP returns the verified certificate of the peer with a virtual IP, or nil.
// The index by IP is built at the first call and kept current from then
// on: a view that is never asked (a broker client's only, or one of the
// join storm's simulated peers) does not pay for it.
func (v *View) ByIP(ip netip.Addr) *cert.Cert {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.byIP == nil {
		v.byIP = make(map[[16]byte]*cert.Cert, len(v.certs))
		for _, c := range v.certs {
			v.byIP[c.IP.As16()] = c
		}
	}
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
	return slices.Clone(v.certs)
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
	changed := 0
	var errs []error
	for _, raw := range raws {
		n, err := v.addLocked(raw, now, borrowed)
		changed += n
		if err != nil {
			v.rejected++
			errs = append(errs, err)
		}
	}
	changed += v.flushLocked()
	if changed > 0 || len(errs) > 0 { // Wait callers may watch Rejected
		v.notifyLocked()
	}
	return changed, errs
}

// addLocked verifies one object and merges it, or, a certificate, puts it
// in v.pending for flushLocked to merge with the rest of the batch. It
// returns how many objects changed the view: before any object other than
// a certificate, the pending certificates are merged first (a revocation
// or an endpoint record acts on the certificates before it). An object
// identical, byte for byte, to the one held changes nothing and is not
// verified again (it was when it entered the view, and what depends on the
// moment — validity, revocation — is enforced by whoever uses the view, as
// before).
func (v *View) addLocked(raw []byte, now time.Time, borrowed bool) (int, error) {
	if c := v.cachedCertLocked(raw, now); c != nil {
		v.pending = append(v.pending, c)
		return 0, nil
	}
	if borrowed {
		raw = bytes.Clone(raw) // what is verified below may be kept
	}
	o, err := signed.Decode(raw)
	if err != nil {
		return 0, err
	}
	if o.Cluster != v.ts.Bundle().Cluster {
		return 0, fmt.Errorf("%s %q: %w", o.Kind, o.Cluster, ErrOtherCluster)
	}
	if o.Kind == signed.KindCert {
		if cur := v.certLocked(o.Subject); cur != nil && bytes.Equal(cur.Encode(), raw) {
			return 0, nil
		}
		c, err := v.ts.VerifyCert(raw, now)
		if err != nil {
			return 0, err
		}
		if v.cache != nil {
			v.cache.put(v.ts.Bundle().MasterKey, raw, c)
		}
		v.pending = append(v.pending, c)
		return 0, nil
	}
	n := v.flushLocked()
	ok, err := v.addOtherLocked(raw, o)
	if ok {
		n++
	}
	return n, err
}

// addOtherLocked verifies and merges an object other than a certificate.
func (v *View) addOtherLocked(raw []byte, o *signed.Object) (bool, error) {
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
		v.certs = slices.DeleteFunc(v.certs, func(c *cert.Cert) bool {
			if !l.Revoked(c.Serial) {
				return false
			}
			v.forgetLocked(c)
			return true
		})
	case signed.KindPolicy:
		if p := v.ts.Policy(); p != nil && bytes.Equal(p.Encode(), raw) {
			return false, nil
		}
		if _, err := v.ts.SetPolicy(raw); errors.Is(err, policy.ErrRollback) {
			return false, nil
		} else if err != nil {
			return false, err
		}
	case signed.KindEndpoints:
		if cur := v.endpoints[o.Subject]; cur != nil && bytes.Equal(cur.Encode(), raw) {
			return false, nil
		}
		c := v.certLocked(o.Subject)
		if c == nil {
			return false, fmt.Errorf("endpoints of %q: no certificate in view", o.Subject)
		}
		r := v.cache.endpoints(c.SignKey, raw)
		if r == nil {
			var err error
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

// flushLocked merges the certificates of v.pending into the view: each
// unless the view holds the same or a newer one of its name (by serial).
// It returns how many changed the view. A batch is merged at once (sorted,
// then merged into the sorted v.certs from the back) rather than object by
// object: a subscription delivers certificates by the frame, and a join
// storm delivers a million of them to the simulated peers' views.
func (v *View) flushLocked() int {
	p := v.pending
	if len(p) == 0 {
		return 0
	}
	defer func() { clear(p); v.pending = p[:0] }() // the buffer is reused; it keeps no pointer
	slices.SortFunc(p, func(a, b *cert.Cert) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return cmp.Compare(b.Serial, a.Serial) // the newest of a name first
	})
	changed, k := 0, 0
	prev := ""
	// Where each is in the view: by binary search, or, for a batch
	// larger than that is worth, by one walk through the sorted view.
	walk, at := len(p)*bits.Len(uint(len(v.certs))) > len(v.certs), 0
	for i, c := range p {
		if i > 0 && c.Name == prev {
			continue // an older one of the same name in the batch
		}
		prev = c.Name
		var j int
		var ok bool
		if walk {
			for at < len(v.certs) && v.certs[at].Name < c.Name {
				at++
			}
			j, ok = at, at < len(v.certs) && v.certs[at].Name == c.Name
		} else {
			j, ok = v.findLocked(c.Name)
		}
		if ok {
			if v.replaceLocked(j, c) {
				changed++
			}
			continue
		}
		p[k] = c // names the view does not hold, still sorted
		k++
	}
	fresh := p[:k]
	if k == 0 {
		return changed
	}
	n := len(v.certs)
	v.certs = slices.Grow(v.certs, k)[:n+k]
	i, j := n-1, k-1
	for w := n + k - 1; j >= 0; w-- {
		if i >= 0 && v.certs[i].Name > fresh[j].Name {
			v.certs[w] = v.certs[i]
			i--
		} else {
			v.certs[w] = fresh[j]
			j--
		}
	}
	if v.byIP != nil {
		for _, c := range fresh {
			v.byIP[c.IP.As16()] = c
		}
	}
	return changed + k
}

// replaceLocked puts c in the place of v.certs[j], of the same name,
// if c is newer (by serial); it reports whether it did.
func (v *View) replaceLocked(j int, c *cert.Cert) bool {
	cur := v.certs[j]
	if cur.Serial >= c.Serial {
		return false
	}
	if !cur.SignKey.Equal(c.SignKey) {
		delete(v.endpoints, c.Name) // signed by the old key
	}
	if v.byIP != nil && v.byIP[cur.IP.As16()] == cur {
		delete(v.byIP, cur.IP.As16())
	}
	v.certs[j] = c
	if v.byIP != nil {
		v.byIP[c.IP.As16()] = c
	}
	return true
}

// forgetLocked removes what the view keeps beside v.certs for c.
func (v *View) forgetLocked(c *cert.Cert) {
	if v.byIP != nil && v.byIP[c.IP.As16()] == c {
		delete(v.byIP, c.IP.As16())
	}
	delete(v.endpoints, c.Name)
}
