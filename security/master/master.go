// Package master holds the cluster master's side of the security module:
// creating a cluster (its key, bundle and state), issuing enrollment
// tokens, admitting peers (token check, use counting, virtual IP
// allocation, certificate signing), revoking peers and signing the global
// policy.
//
// On disk, `pvcd cluster init NAME --out DIR` makes:
//
//	DIR/NAME.key       the master's Ed25519 key (0600)
//	DIR/NAME.cluster   the public cluster bundle
//	DIR/NAME.state/    the master's state (0700), found next to the key:
//	    cluster          a copy of the bundle
//	    peers.json       name -> virtual IP, keys, serials; the serial counter
//	    ledger.json      uses of each enrollment token
//	    revocation       the revocation list in force (signed)
//	    policy           the global policy in force (signed)
//	    lock             flock'ed during every change
//
// Every file is rewritten atomically (temporary file and rename).
package master

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/name"
	"github.com/pvc-project/pvc/security/policy"
	"github.com/pvc-project/pvc/security/revoke"
)

// Sentinel errors.
var (
	ErrNoState      = errors.New("no master state next to the master key")
	ErrExists       = errors.New("cluster files already exist")
	ErrNameTaken    = errors.New("peer name already enrolled with other keys")
	ErrPeerRevoked  = errors.New("peer was revoked")
	ErrStale        = errors.New("enrollment request too old or from the future")
	ErrSubnetFull   = errors.New("no free virtual IP left in the cluster subnet")
	ErrUnknownPeer  = errors.New("no such peer or serial")
	ErrWrongCluster = errors.New("object of another cluster")
)

// Defaults.
const (
	DefaultSubnetBits = 16
	DefaultCertTTL    = 365 * 24 * time.Hour
	DefaultTokenTTL   = 24 * time.Hour
	MaxRequestAge     = 15 * time.Minute // how old an enrollment request may be
	MaxClockSkew      = 2 * time.Minute  // how far in the future
)

// Paths of a cluster's files in an output directory.
func KeyPath(dir, cluster string) string    { return filepath.Join(dir, cluster+".key") }
func BundlePath(dir, cluster string) string { return filepath.Join(dir, cluster+bundle.FileExt) }
func StatePath(keyPath string) string       { return strings.TrimSuffix(keyPath, ".key") + ".state" }

// Master is an opened cluster master. Its methods are safe for concurrent
// use within a process and lock the state dir against other processes.
type Master struct {
	keyPath  string
	stateDir string
	key      ed25519.PrivateKey
	bundle   *bundle.Bundle

	mu  sync.Mutex // serialises changes within this process
	now func() time.Time
}

// InitOptions are the choices of `pvcd cluster init`.
type InitOptions struct {
	Brokers []bundle.Broker
	Subnet  netip.Prefix   // zero: a random /16 that overlaps none of Taken
	Taken   []netip.Prefix // subnets of other clusters on this host
	Domain  string         // zero: CLUSTER.pvc
}

// Init creates a cluster in dir: master key, bundle and state. It refuses
// to overwrite an existing cluster of that name (ErrExists).
func Init(dir, cluster string, o InitOptions) (*Master, error) {
	if err := name.Check(cluster); err != nil {
		return nil, fmt.Errorf("cluster init: %w", err)
	}
	keyPath := KeyPath(dir, cluster)
	for _, p := range []string{keyPath, BundlePath(dir, cluster), StatePath(keyPath)} {
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("cluster init: %w: %s", ErrExists, p)
		}
	}
	b := &bundle.Bundle{Cluster: cluster, Subnet: o.Subnet, Domain: o.Domain, Brokers: o.Brokers, Version: 1}
	if b.Domain == "" {
		b.Domain = bundle.DefaultDomain(cluster)
	}
	if !b.Subnet.IsValid() {
		p, err := bundle.ChooseSubnet(o.Taken, DefaultSubnetBits)
		if err != nil {
			return nil, fmt.Errorf("cluster init: %w", err)
		}
		b.Subnet = p
	} else {
		for _, t := range o.Taken {
			if t.Overlaps(b.Subnet) {
				return nil, fmt.Errorf("cluster init: subnet %v overlaps %v of another cluster", b.Subnet, t)
			}
		}
	}
	key, err := keys.NewSigning()
	if err != nil {
		return nil, err
	}
	if err := b.Sign(key); err != nil {
		return nil, fmt.Errorf("cluster init: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster init: %w", err)
	}
	state := StatePath(keyPath)
	if err := os.Mkdir(state, 0o700); err != nil {
		return nil, fmt.Errorf("cluster init: %w", err)
	}
	if err := keys.SaveSigning(keyPath, key); err != nil {
		return nil, fmt.Errorf("cluster init: %w", err)
	}
	for _, p := range []string{filepath.Join(state, "cluster"), BundlePath(dir, cluster)} {
		if err := keys.WriteFileAtomic(p, b.Encode(), 0o644); err != nil {
			return nil, fmt.Errorf("cluster init: %w", err)
		}
	}
	m := &Master{keyPath: keyPath, stateDir: state, key: key, bundle: b, now: time.Now}
	// Version 1 of the revocation list (empty) and of the global policy
	// (allow everything) so that peers always have one of each.
	if _, err := m.revise(nil); err != nil {
		return nil, fmt.Errorf("cluster init: %w", err)
	}
	if err := m.SignPolicy(&policy.Global{Default: policy.Allow}); err != nil {
		return nil, fmt.Errorf("cluster init: %w", err)
	}
	return m, nil
}

// Open opens the master whose key file is keyPath; its state dir is next to
// it (NAME.key -> NAME.state). The key file must be 0600.
func Open(keyPath string) (*Master, error) {
	key, err := keys.LoadSigning(keyPath)
	if err != nil {
		return nil, fmt.Errorf("open master: %w", err)
	}
	state := StatePath(keyPath)
	data, err := os.ReadFile(filepath.Join(state, "cluster"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open master: %w: %s (made by pvcd cluster init)", ErrNoState, state)
	}
	if err != nil {
		return nil, fmt.Errorf("open master: %w", err)
	}
	b, err := bundle.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("open master %s: %w", state, err)
	}
	if !bytes.Equal(b.MasterKey, key.Public().(ed25519.PublicKey)) {
		return nil, fmt.Errorf("open master: %w: the bundle in %s is of another master key", bundle.ErrWrongMaster, state)
	}
	return &Master{keyPath: keyPath, stateDir: state, key: key, bundle: b, now: time.Now}, nil
}

// SetClock replaces the clock (for tests).
func (m *Master) SetClock(now func() time.Time) { m.now = now }

// Bundle returns the cluster bundle.
func (m *Master) Bundle() *bundle.Bundle { return m.bundle }

// Cluster returns the cluster's name.
func (m *Master) Cluster() string { return m.bundle.Cluster }

// PublicKey returns the master's public key.
func (m *Master) PublicKey() ed25519.PublicKey { return m.bundle.MasterKey }

// StateDir returns the master's state directory.
func (m *Master) StateDir() string { return m.stateDir }

// locked runs fn with the state locked against this and other processes.
func (m *Master) locked(fn func() error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	unlock, err := lockState(m.stateDir)
	if err != nil {
		return err
	}
	defer unlock()
	return fn()
}

func (m *Master) path(file string) string { return filepath.Join(m.stateDir, file) }

// Revocation returns the revocation list in force.
func (m *Master) Revocation() (*revoke.List, error) {
	data, err := os.ReadFile(m.path("revocation"))
	if err != nil {
		return nil, fmt.Errorf("revocation list: %w", err)
	}
	l, err := revoke.Decode(data)
	if err != nil {
		return nil, err
	}
	if err := l.Verify(m.PublicKey(), m.Cluster()); err != nil {
		return nil, err
	}
	return l, nil
}

// Policy returns the global policy in force.
func (m *Master) Policy() (*policy.Global, error) {
	data, err := os.ReadFile(m.path("policy"))
	if err != nil {
		return nil, fmt.Errorf("global policy: %w", err)
	}
	g, err := policy.Decode(data)
	if err != nil {
		return nil, err
	}
	if err := g.Verify(m.PublicKey(), m.Cluster()); err != nil {
		return nil, err
	}
	return g, nil
}

// SignPolicy signs g as the next version of the cluster's global policy
// (filling its Cluster and Version) and puts it in force.
func (m *Master) SignPolicy(g *policy.Global) error {
	return m.locked(func() error {
		g.Cluster = m.Cluster()
		g.Version = 1
		if cur, err := m.Policy(); err == nil {
			g.Version = cur.Version + 1
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := g.Sign(m.key); err != nil {
			return err
		}
		return keys.WriteFileAtomic(m.path("policy"), g.Encode(), 0o644)
	})
}

// revise signs and stores the next revocation list with serials added.
// The caller holds the lock (or is Init).
func (m *Master) revise(serials []uint64) (*revoke.List, error) {
	cur, err := m.Revocation()
	if errors.Is(err, fs.ErrNotExist) {
		cur, err = &revoke.List{Cluster: m.Cluster()}, nil
	}
	if err != nil {
		return nil, err
	}
	next := cur.With(cur.Version+1, serials...)
	if err := next.Sign(m.key); err != nil {
		return nil, err
	}
	if err := keys.WriteFileAtomic(m.path("revocation"), next.Encode(), 0o644); err != nil {
		return nil, err
	}
	return next, nil
}
