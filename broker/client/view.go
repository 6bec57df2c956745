package client

import (
	"context"
	"errors"
	"fmt"
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
	now func() time.Time

	mu        sync.Mutex
	ts        *trust.Store
	certs     map[string]*cert.Cert
	byIP      map[netip.Addr]string
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
	return &View{now: now, ts: trust.New(b), certs: map[string]*cert.Cert{}, byIP: map[netip.Addr]string{},
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
	return v.certs[v.byIP[ip]]
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
	changed, err := v.add(raw)
	if err != nil {
		v.mu.Lock()
		v.rejected++
		v.notifyLocked() // Wait callers may watch Rejected
		v.mu.Unlock()
	}
	return changed, err
}

func (v *View) add(raw []byte) (bool, error) {
	o, err := signed.Decode(raw)
	if err != nil {
		return false, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if o.Cluster != v.ts.Bundle().Cluster {
		return false, fmt.Errorf("%s %q: %w", o.Kind, o.Cluster, ErrOtherCluster)
	}
	switch o.Kind {
	case signed.KindBundle:
		b, err := bundle.Decode(raw)
		if err != nil {
			return false, err
		}
		cur := v.ts.Bundle()
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
		if _, err := v.ts.SetPolicy(raw); errors.Is(err, policy.ErrRollback) {
			return false, nil
		} else if err != nil {
			return false, err
		}
	case signed.KindCert:
		c, err := v.ts.VerifyCert(raw, v.now())
		if err != nil {
			return false, err
		}
		if cur := v.certs[c.Name]; cur != nil {
			if cur.Serial >= c.Serial {
				return false, nil
			}
			if !cur.SignKey.Equal(c.SignKey) {
				delete(v.endpoints, c.Name) // signed by the old key
			}
			delete(v.byIP, cur.IP)
		}
		v.certs[c.Name] = c
		v.byIP[c.IP] = c.Name
	case signed.KindEndpoints:
		r, err := endpoint.FromObject(o)
		if err != nil {
			return false, err
		}
		c := v.certs[r.Name]
		if c == nil {
			return false, fmt.Errorf("endpoints of %q: no certificate in view", r.Name)
		}
		if err := r.Verify(c.SignKey); err != nil {
			return false, err
		}
		if cur := v.endpoints[r.Name]; cur != nil && cur.Version >= r.Version {
			return false, nil
		}
		v.endpoints[r.Name] = r
	default:
		return false, fmt.Errorf("unexpected %s from a broker", o.Kind)
	}
	v.notifyLocked()
	return true, nil
}

func (v *View) dropLocked(name string) {
	if c := v.certs[name]; c != nil && v.byIP[c.IP] == name {
		delete(v.byIP, c.IP)
	}
	delete(v.certs, name)
	delete(v.endpoints, name)
}
