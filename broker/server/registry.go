package server

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/internal/wire"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/endpoint"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/policy"
	"github.com/pvc-project/pvc/security/revoke"
	"github.com/pvc-project/pvc/security/signed"
	"github.com/pvc-project/pvc/security/trust"
)

type objKey struct {
	kind    signed.Kind
	subject string
}

// entry is one stored object: the highest valid version seen.
type entry struct {
	raw     []byte
	version uint64
	ip      netip.Addr        // certificate: its virtual IP
	signKey ed25519.PublicKey // certificate: the peer's signing key
}

// cluster is what the broker holds for one cluster. Fields other than ts are
// guarded by Server.mu.
type cluster struct {
	name string
	ts   atomic.Pointer[trust.Store] // replaced by a bundle update

	objs    map[objKey]*entry
	byIP    map[netip.Addr]string
	peers   map[string][]*session // peer name → its sessions, oldest first
	masters map[uint64]*session
	subs    map[uint64]*session
	dirty   bool // registry file to rewrite
	bdirty  bool // bundle file to rewrite
}

func (c *cluster) trust() *trust.Store { return c.ts.Load() }

// Errors of Publish.
var (
	ErrUnknownCluster = errors.New("cluster not served by this broker")
	ErrNotStored      = errors.New("brokers do not store this kind of object")
	ErrNotYours       = errors.New("a peer may publish only its own endpoints")
)

// knownBroker reports whether key is pinned as a broker in a bundle held here.
func (s *Server) knownBroker(key ed25519.PublicKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.clusters {
		for _, b := range c.trust().Bundle().Brokers {
			if b.Key != nil && b.Key.Equal(key) {
				return true
			}
		}
	}
	return false
}

// pinnedKey returns the key pinned for a broker address in a held bundle.
func (s *Server) pinnedKey(addr string) ed25519.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.clusters {
		for _, b := range c.trust().Bundle().Brokers {
			if b.Addr == addr && b.Key != nil {
				return b.Key
			}
		}
	}
	return nil
}

// addBundle takes a cluster bundle. The first bundle of a name binds it to
// its master key; a later one must come from that master with a higher
// version. Unless trusted (configuration, state dir), a bundle for a new
// cluster must pin this broker's key. It reports whether the bundle was new.
func (s *Server) addBundle(raw []byte, trusted bool) (bool, error) {
	b, err := bundle.Decode(raw)
	if err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusters[b.Cluster]
	if c == nil {
		if !trusted && !pins(b, s.pub) {
			return false, fmt.Errorf("bundle of cluster %q: %w", b.Cluster, ErrUnknownCluster)
		}
		if len(s.clusters) >= s.cfg.Limits.MaxClusters {
			return false, fmt.Errorf("bundle of cluster %q: too many clusters", b.Cluster)
		}
		c = &cluster{name: b.Cluster, objs: map[objKey]*entry{}, byIP: map[netip.Addr]string{},
			peers: map[string][]*session{}, masters: map[uint64]*session{}, subs: map[uint64]*session{}}
		c.ts.Store(trust.New(b))
		s.clusters[b.Cluster] = c
		s.log.Info("serving cluster", "cluster", b.Cluster, "version", b.Version)
	} else {
		if err := b.Verify(c.trust().Bundle().MasterKey); err != nil {
			return false, err
		}
		if b.Version <= c.trust().Bundle().Version {
			return false, nil
		}
		ts := trust.New(b)
		if e := c.objs[objKey{signed.KindRevocation, c.name}]; e != nil {
			ts.SetRevocation(e.raw)
		}
		if e := c.objs[objKey{signed.KindPolicy, c.name}]; e != nil {
			ts.SetPolicy(e.raw)
		}
		c.ts.Store(ts)
	}
	c.objs[objKey{signed.KindBundle, c.name}] = &entry{raw: raw, version: b.Version}
	c.bdirty = true
	s.notifyLocked(c, raw, nil)
	return true, nil
}

func pins(b *bundle.Bundle, key ed25519.PublicKey) bool {
	for _, br := range b.Brokers {
		if br.Key != nil && br.Key.Equal(key) {
			return true
		}
	}
	return false
}

// accept verifies a signed object and stores it if its version is higher
// than the one held; from is the session it came from (nil: the state dir).
// It returns the version held afterwards and whether the object was new.
func (s *Server) accept(raw []byte, from *session) (uint64, bool, error) {
	o, err := signed.Decode(raw)
	if err != nil {
		return 0, false, err
	}
	if from != nil && from.cl != nil && o.Cluster != from.cl.name {
		return 0, false, fmt.Errorf("%s of cluster %q: %w", o.Kind, o.Cluster, cert.ErrOtherCluster)
	}
	if o.Kind == signed.KindBundle {
		trusted := from == nil
		isNew, err := s.addBundle(raw, trusted)
		return o.Version, isNew, err
	}
	s.mu.Lock()
	cl := s.clusters[o.Cluster]
	s.mu.Unlock()
	if cl == nil {
		return 0, false, fmt.Errorf("%s of cluster %q: %w", o.Kind, o.Cluster, ErrUnknownCluster)
	}
	if o.Kind == signed.KindEndpoints && from != nil && from.role == proto.RolePeer && o.Subject != from.name {
		return 0, false, ErrNotYours
	}
	k := objKey{o.Kind, o.Subject}
	s.mu.Lock()
	cur := cl.objs[k]
	s.mu.Unlock()
	if cur != nil && bytes.Equal(cur.raw, raw) {
		// Held already, byte for byte (a peer's reconnection, a replica's
		// or a master's repeat): it was verified when it was stored.
		return cur.version, false, nil
	}
	e := &entry{raw: raw, version: o.Version}
	var revoked *revoke.List
	switch o.Kind {
	case signed.KindRevocation:
		revoked, err = cl.trust().SetRevocation(raw)
		if errors.Is(err, revoke.ErrRollback) {
			err = nil // not newer: keep what we hold
		}
	case signed.KindPolicy:
		_, err = cl.trust().SetPolicy(raw)
		if errors.Is(err, policy.ErrRollback) {
			err = nil
		}
	case signed.KindCert:
		var c *cert.Cert
		if from != nil && from.cert != nil && from.certTS == cl.trust() && bytes.Equal(from.cert.Encode(), raw) {
			// The session's own certificate, verified moments ago in its
			// Auth against this trust store; only a revocation since then
			// could change the answer.
			c = from.cert
			if rl := cl.trust().Revocation(); rl != nil && rl.Revoked(c.Serial) {
				err = fmt.Errorf("certificate %q: %w", c.Name, cert.ErrRevoked)
			}
		} else {
			c, err = cl.trust().VerifyCert(raw, s.cfg.Now())
		}
		if err == nil {
			e.ip, e.signKey = c.IP, c.SignKey
		}
	case signed.KindEndpoints:
		var rec *endpoint.Record
		if rec, err = endpoint.FromObject(o); err == nil {
			s.mu.Lock()
			ce := cl.objs[objKey{signed.KindCert, o.Subject}]
			s.mu.Unlock()
			if ce == nil {
				err = fmt.Errorf("endpoints of %q: no certificate held", o.Subject)
			} else {
				err = rec.Verify(ce.signKey)
			}
		}
	default:
		err = fmt.Errorf("%s: %w", o.Kind, ErrNotStored)
	}
	if err != nil {
		return 0, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := cl.objs[k]; cur != nil && cur.version >= o.Version {
		return cur.version, false, nil
	}
	if o.Kind == signed.KindCert {
		if old := cl.objs[k]; old != nil && cl.byIP[old.ip] == o.Subject {
			delete(cl.byIP, old.ip)
		}
		cl.byIP[e.ip] = o.Subject
	}
	cl.objs[k] = e
	cl.dirty = true
	if revoked != nil {
		s.applyRevocationLocked(cl, revoked)
	}
	s.metrics.stored.Add(1)
	s.notifyLocked(cl, raw, from)
	return o.Version, true, nil
}

// applyRevocationLocked drops revoked certificates (and their endpoints)
// and closes the sessions of revoked peers.
func (s *Server) applyRevocationLocked(cl *cluster, l *revoke.List) {
	for k, e := range cl.objs {
		if k.kind != signed.KindCert || !l.Revoked(e.version) {
			continue
		}
		delete(cl.objs, k)
		delete(cl.objs, objKey{signed.KindEndpoints, k.subject})
		if cl.byIP[e.ip] == k.subject {
			delete(cl.byIP, e.ip)
		}
	}
	for name, ps := range cl.peers {
		for _, ss := range ps {
			if l.Revoked(ss.serial) {
				s.log.Info("closing session of revoked peer", "name", name, "addr", ss.remote)
				ss.closeAfter(&proto.Error{Code: proto.CodeRevoked, Text: "certificate revoked"})
			}
		}
	}
}

// notifyLocked pushes a new object to the cluster's subscribers and to the
// replica links other than the one it came from.
func (s *Server) notifyLocked(cl *cluster, raw []byte, from *session) {
	urgent := len(raw) > 4 && signed.Kind(raw[4]) != signed.KindCert && signed.Kind(raw[4]) != signed.KindEndpoints
	for _, ss := range cl.subs {
		if urgent {
			ss.pushNow(raw)
		} else {
			ss.push(raw) // batched with other pushes by the session's writer
		}
	}
	for _, r := range s.replicas {
		if r != from {
			r.send(&proto.Publish{Object: raw}, mustSend)
		}
	}
}

// snapshotLocked returns a cluster's objects: bundle, revocation, policy,
// certificates, endpoint records, in that order (a subscriber verifies an
// endpoint record against a certificate it already holds); within a kind,
// in no particular order. Two passes over the map, no sort: a join storm
// takes a snapshot per subscriber.
func snapshotLocked(cl *cluster) [][]byte {
	var start [6]int // start[r+1]: objects of rank ≤ r
	for k := range cl.objs {
		start[kindRank(k.kind)+1]++
	}
	for r := 1; r < len(start); r++ {
		start[r] += start[r-1]
	}
	out := make([][]byte, len(cl.objs))
	for k, e := range cl.objs {
		r := kindRank(k.kind)
		out[start[r]] = e.raw
		start[r]++
	}
	return out
}

func kindRank(k signed.Kind) int {
	switch k {
	case signed.KindBundle:
		return 0
	case signed.KindRevocation:
		return 1
	case signed.KindPolicy:
		return 2
	case signed.KindCert:
		return 3
	}
	return 4
}

func (s *Server) lookup(cl *cluster, by uint8, key string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := key
	if by == proto.LookupIP {
		ip, err := netip.ParseAddr(key)
		if err != nil {
			return nil
		}
		name = cl.byIP[ip]
	}
	if e := cl.objs[objKey{signed.KindCert, name}]; e != nil {
		return e.raw
	}
	return nil
}

// State files.
func (s *Server) clusterFile(name string) string {
	return filepath.Join(s.cfg.StateDir, "clusters", name+bundle.FileExt)
}
func (s *Server) registryFile(name string) string {
	return filepath.Join(s.cfg.StateDir, "registry", name+".db")
}

func (s *Server) loadState() error {
	files, _ := filepath.Glob(filepath.Join(s.cfg.StateDir, "clusters", "*"+bundle.FileExt))
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err == nil {
			_, err = s.addBundle(raw, true)
		}
		if err != nil {
			return fmt.Errorf("broker state %s: %w", f, err)
		}
		name := strings.TrimSuffix(filepath.Base(f), bundle.FileExt)
		db, err := os.ReadFile(s.registryFile(name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return fmt.Errorf("broker state: %w", err)
		}
		r := wire.NewReader(db)
		n := 0
		for r.Len() > 0 && r.Err() == nil {
			o := r.Bytes32(signed.MaxSize)
			if r.Err() != nil {
				break
			}
			if _, _, err := s.accept(append([]byte{}, o...), nil); err != nil {
				s.log.Info("registry object dropped at load", "cluster", name, "err", err)
			}
			n++
		}
		if r.Err() != nil {
			s.log.Warn("registry file truncated", "file", s.registryFile(name), "err", r.Err())
		}
		s.log.Info("registry loaded", "cluster", name, "objects", n)
	}
	s.mu.Lock()
	for _, c := range s.clusters {
		c.dirty, c.bdirty = false, false
	}
	s.mu.Unlock()
	return nil
}

// saveDirty rewrites the files of changed clusters atomically.
func (s *Server) saveDirty() error {
	type job struct {
		path string
		data []byte
	}
	var jobs []job
	s.mu.Lock()
	for name, c := range s.clusters {
		if c.bdirty {
			jobs = append(jobs, job{s.clusterFile(name), c.objs[objKey{signed.KindBundle, name}].raw})
			c.bdirty = false
		}
		if c.dirty {
			var w wire.Writer
			for _, o := range snapshotLocked(c) {
				if k := signed.Kind(o[4]); k != signed.KindBundle {
					w.Bytes32(o)
				}
			}
			jobs = append(jobs, job{s.registryFile(name), w.B})
			c.dirty = false
		}
	}
	s.mu.Unlock()
	var errs []error
	for _, j := range jobs {
		if err := os.MkdirAll(filepath.Dir(j.path), 0o700); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := keys.WriteFileAtomic(j.path, j.data, 0o600); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
