package trust

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/internal/sectest"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/policy"
	"github.com/pvc-project/pvc/security/revoke"
)

func store(t *testing.T) *Store {
	b := &bundle.Bundle{Cluster: "lab", Subnet: netip.MustParsePrefix("240.7.0.0/16"), Domain: "lab.pvc", Version: 1}
	if err := b.Sign(sectest.Key(1)); err != nil {
		t.Fatal(err)
	}
	d, err := bundle.Decode(b.Encode())
	if err != nil {
		t.Fatal(err)
	}
	return New(d)
}

func revList(t *testing.T, key byte, version uint64, serials ...uint64) []byte {
	l := &revoke.List{Cluster: "lab", Version: version, Serials: serials}
	if err := l.Sign(sectest.Key(key)); err != nil {
		t.Fatal(err)
	}
	return l.Encode()
}

func pol(t *testing.T, version uint64) []byte {
	g := &policy.Global{Cluster: "lab", Version: version, Default: policy.Allow}
	if err := g.Sign(sectest.Key(1)); err != nil {
		t.Fatal(err)
	}
	return g.Encode()
}

func TestRevocationRollback(t *testing.T) {
	s := store(t)
	if _, err := s.SetRevocation(revList(t, 1, 2, 5)); err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint64{1, 2} {
		if _, err := s.SetRevocation(revList(t, 1, v)); !errors.Is(err, revoke.ErrRollback) {
			t.Errorf("v%d after v2: %v, want ErrRollback", v, err)
		}
	}
	if _, err := s.SetRevocation(revList(t, 2, 9)); !errors.Is(err, revoke.ErrWrongSigner) {
		t.Errorf("list of another master: %v", err)
	}
	if !s.Revocation().Revoked(5) || s.Revocation().Version != 2 {
		t.Error("the list in force changed")
	}
	if _, err := s.SetRevocation(revList(t, 1, 3, 5, 6)); err != nil || !s.Revocation().Revoked(6) {
		t.Errorf("v3: %v", err)
	}
}

func TestPolicyRollback(t *testing.T) {
	s := store(t)
	if _, err := s.SetPolicy(pol(t, 4)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetPolicy(pol(t, 3)); !errors.Is(err, policy.ErrRollback) {
		t.Errorf("v3 after v4: %v, want ErrRollback", err)
	}
	if _, err := s.SetPolicy(pol(t, 5)); err != nil || s.Policy().Version != 5 {
		t.Errorf("v5: %v", err)
	}
}

func TestVerifyCert(t *testing.T) {
	s := store(t)
	var wg keys.WGPublic
	wg[0] = 1
	mk := func(ip string, serial uint64) []byte {
		c := &cert.Cert{Cluster: "lab", Name: "a", IP: netip.MustParseAddr(ip), WGKey: wg, SignKey: sectest.Pub(3),
			Serial: serial, NotBefore: sectest.Now.Add(-time.Hour), NotAfter: sectest.Now.Add(time.Hour)}
		if err := c.Sign(sectest.Key(1)); err != nil {
			t.Fatal(err)
		}
		return c.Encode()
	}
	if _, err := s.VerifyCert(mk("240.7.0.9", 1), sectest.Now); err != nil {
		t.Error(err)
	}
	if _, err := s.VerifyCert(mk("240.8.0.9", 1), sectest.Now); !errors.Is(err, cert.ErrFormat) {
		t.Errorf("IP outside the subnet: %v", err)
	}
	if _, err := s.SetRevocation(revList(t, 1, 1, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.VerifyCert(mk("240.7.0.9", 1), sectest.Now); !errors.Is(err, cert.ErrRevoked) {
		t.Errorf("revoked: %v", err)
	}
}
