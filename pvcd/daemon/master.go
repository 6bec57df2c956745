package daemon

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
)

// masterRole is the cluster master inside a pvcd: it answers enrollment
// requests that the brokers forward, and publishes the master's objects
// (bundle, revocation list, policy) so that `pvcd revoke` or `pvcd policy
// sign` reaches every peer within seconds.
type masterRole struct {
	m         *master.Master
	c         *client.Client
	log       *slog.Logger
	published chan struct{} // closed once a broker holds the bundle
	once      sync.Once
}

func openMaster(keyPath string, b *bundle.Bundle, _ ed25519.PrivateKey, log *slog.Logger) (*masterRole, error) {
	m, err := master.Open(keyPath)
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	if string(m.PublicKey()) != string(b.MasterKey) || m.Cluster() != b.Cluster {
		return nil, fmt.Errorf("master key %s is not the master of cluster %s's bundle", keyPath, b.Cluster)
	}
	key, err := keys.LoadSigning(keyPath)
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	r := &masterRole{m: m, log: log.With("part", "master"), published: make(chan struct{})}
	r.c, err = client.New(client.Config{Bundle: b, Role: proto.RoleMaster, Key: key, Logger: r.log,
		Admit: func(req []byte) ([]byte, error) {
			c, err := m.Admit(req)
			if err != nil {
				r.log.Warn("enrollment refused", "err", err)
				return nil, err
			}
			r.log.Info("admitted", "peer", c.Name, "ip", c.IP, "serial", c.Serial)
			return c.Encode(), nil
		}})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// issueSelf certifies the master's own host.
func (r *masterRole) issueSelf(name string, wg keys.WGPrivate, sk ed25519.PrivateKey) (*cert.Cert, error) {
	return r.m.Issue(master.CertOptions{Name: name, WGKey: wg.Public(), SignKey: sk.Public().(ed25519.PublicKey), Groups: []string{"master"}})
}

func (r *masterRole) run(ctx context.Context) {
	done := make(chan struct{})
	go func() { defer close(done); _ = r.c.Run(ctx) }()
	defer func() { <-done }()
	published := map[string]uint64{}
	for {
		if len(r.c.Connected()) > 0 {
			r.publish(ctx, "bundle", r.m.Bundle().Version, func() ([]byte, error) { return r.m.Bundle().Encode(), nil }, published)
			if l, err := r.m.Revocation(); err == nil && l != nil {
				r.publish(ctx, "revocation", l.Version, func() ([]byte, error) { return l.Encode(), nil }, published)
			}
			if g, err := r.m.Policy(); err == nil && g != nil {
				r.publish(ctx, "policy", g.Version, func() ([]byte, error) { return g.Encode(), nil }, published)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// publish publishes an object when its version is new, and again every
// minute (a replica that was down, a broker that restarted).
func (r *masterRole) publish(ctx context.Context, what string, version uint64, enc func() ([]byte, error), published map[string]uint64) {
	key := what
	if published[key] == version && time.Now().Unix()%60 != 0 {
		return
	}
	raw, err := enc()
	if err != nil {
		return
	}
	if err := r.c.Publish(ctx, raw); err != nil {
		r.log.Warn("publish", "object", what, "version", version, "err", err)
		return
	}
	if published[key] != version {
		r.log.Info("published", "object", what, "version", version)
	}
	published[key] = version
	if what == "bundle" {
		r.once.Do(func() { close(r.published) })
	}
}

// waitPublished waits until a broker holds the cluster's bundle (so that it
// serves the cluster), or the timeout passes.
func (r *masterRole) waitPublished(ctx context.Context, timeout time.Duration) bool {
	select {
	case <-r.published:
		return true
	case <-ctx.Done():
	case <-time.After(timeout):
	}
	return false
}
