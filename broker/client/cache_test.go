package client_test

import (
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
)

// TestVerifyCache: views that share a cache verify each certificate's
// signature once, but a cached certificate is still checked against each
// view's moment and revocation list, and changed bytes are verified anew.
func TestVerifyCache(t *testing.T) {
	m, err := master.Init(t.TempDir(), "lab", master.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	type host struct {
		raw []byte
		key ed25519.PrivateKey
	}
	issue := func(name string) host {
		sk, _ := keys.NewSigning()
		wg, _ := keys.NewWG()
		c, err := m.Issue(master.CertOptions{Name: name, WGKey: wg.Public(), SignKey: sk.Public().(ed25519.PublicKey)})
		if err != nil {
			t.Fatal(err)
		}
		return host{c.Encode(), sk}
	}
	a, b := issue("a"), issue("b")
	cache := client.NewVerifyCache(0)
	view := func(now func() time.Time) *client.View {
		c, err := client.New(client.Config{Bundle: m.Bundle(), Cert: a.raw, Key: a.key, VerifyCache: cache, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return c.View()
	}
	if ok, err := view(nil).Add(b.raw); !ok || err != nil {
		t.Fatalf("first view: %v, %v", ok, err)
	}
	if n := cache.Len(); n != 2 {
		t.Errorf("cache holds %d entries, want a's and b's certificates", n)
	}
	// Cached, but expired at this view's moment.
	late := func() time.Time { return time.Now().Add(10 * 365 * 24 * time.Hour) }
	if _, err := view(late).Add(b.raw); !errors.Is(err, cert.ErrExpired) {
		t.Errorf("cached certificate, expired now: %v, want ErrExpired", err)
	}
	// Cached, but revoked in this view.
	rl, _, err := m.Revoke("b")
	if err != nil {
		t.Fatal(err)
	}
	v := view(nil)
	if _, err := v.Add(rl.Encode()); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Add(b.raw); !errors.Is(err, cert.ErrRevoked) {
		t.Errorf("cached certificate, revoked in the view: %v, want ErrRevoked", err)
	}
	// One bit changed: another key, verified in full, refused.
	bad := append([]byte(nil), b.raw...)
	bad[len(bad)-70] ^= 1
	v = view(nil)
	if _, err := v.Add(bad); err == nil || v.Cert("b") != nil {
		t.Errorf("tampered certificate accepted (%v)", err)
	}
	// The same bytes twice: the second changes nothing and is no error.
	v = view(nil)
	if ok, err := v.AddAll([][]byte{b.raw, b.raw}); ok != 1 || err != nil {
		t.Errorf("the same certificate twice: %d changes, %v; want 1, none", ok, err)
	}
}
