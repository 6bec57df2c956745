package client

import (
	"bytes"
	"crypto/ed25519"
	"net/netip"
	"strings"
	"testing"

	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/endpoint"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
)

// TestViewBorrowed: objects taken from a session's read buffer (addAll with
// borrowed) are copied before the view keeps them: overwriting the buffer
// afterwards changes nothing in the view, with and without a shared cache.
func TestViewBorrowed(t *testing.T) {
	m, err := master.Init(t.TempDir(), "lab", master.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var raws [][]byte
	for _, name := range []string{"a", "b", "c"} {
		sk, _ := keys.NewSigning()
		wg, _ := keys.NewWG()
		c, err := m.Issue(master.CertOptions{Name: name, WGKey: wg.Public(), SignKey: sk.Public().(ed25519.PublicKey)})
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, c.Encode())
	}
	cache := NewVerifyCache(0)
	for i, v := range []*View{NewView(m.Bundle(), nil), NewView(m.Bundle(), nil), NewView(m.Bundle(), nil)} {
		if i > 0 {
			v.cache = cache // the second verifies into the cache, the third hits it
		}
		buf := bytes.Join(raws, nil)
		var borrowed [][]byte
		for _, r := range raws {
			borrowed = append(borrowed, buf[:len(r)])
			buf = buf[len(r):]
		}
		if n, errs := v.addAll(borrowed, true); n != 3 || len(errs) > 0 {
			t.Fatalf("view %d: took %d of 3: %v", i, n, errs)
		}
		for _, b := range borrowed {
			for j := range b {
				b[j] = 0xee
			}
		}
		for _, raw := range raws {
			c, err := v.ts.VerifyCert(raw, v.now())
			if err != nil {
				t.Fatal(err)
			}
			got := v.Cert(c.Name)
			if got == nil || !bytes.Equal(got.Encode(), raw) {
				t.Fatalf("view %d: certificate of %s changed with the read buffer", i, c.Name)
			}
			if v.ByIP(c.IP) != got {
				t.Fatalf("view %d: ByIP(%v) is not the certificate of %s", i, c.IP, c.Name)
			}
		}
	}
}

// TestViewBatch: certificates of one batch are merged together (sorted,
// the newest serial of a name wins, whatever the order), and objects that
// act on certificates see those before them in the batch: an endpoint
// record its peer's certificate, a revocation the certificates it revokes.
// A newer certificate with another signing key drops the endpoint record
// signed by the old one. The same with and without a verify cache.
func TestViewBatch(t *testing.T) {
	m, err := master.Init(t.TempDir(), "lab", master.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	signKeys := map[string]ed25519.PrivateKey{}
	issue := func(name string) []byte {
		sk, _ := keys.NewSigning()
		wg, _ := keys.NewWG()
		c, err := m.Issue(master.CertOptions{Name: name, WGKey: wg.Public(), SignKey: sk.Public().(ed25519.PublicKey)})
		if err != nil {
			t.Fatal(err)
		}
		signKeys[string(c.Encode())] = sk
		return c.Encode()
	}
	endpoints := func(certRaw []byte, name string) []byte {
		r := &endpoint.Record{Cluster: "lab", Name: name, Version: 1,
			Endpoints: []endpoint.Endpoint{{Kind: endpoint.Host, Addr: netip.MustParseAddrPort("198.18.0.2:51820")}}}
		if err := r.Sign(signKeys[string(certRaw)]); err != nil {
			t.Fatal(err)
		}
		return r.Encode()
	}
	a1, b, c := issue("a"), issue("b"), issue("c")
	a2 := issue("a") // new keys, higher serial, same IP
	epA1, epB := endpoints(a1, "a"), endpoints(b, "b")
	l, _, err := m.Revoke("c")
	if err != nil {
		t.Fatal(err)
	}
	cert := func(v *View, raw []byte) *cert.Cert {
		c, err := v.ts.VerifyCert(raw, v.now())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cache := NewVerifyCache(0)
	for _, withCache := range []bool{false, true, true} { // the third hits the cache
		view := func() *View {
			v := NewView(m.Bundle(), nil)
			if withCache {
				v.cache = cache
			}
			return v
		}
		// Out of order, duplicates, an older one after the newer.
		v := view()
		if n, errs := v.AddAll([][]byte{a2, b, a1, a2}); n != 2 || len(errs) > 0 {
			t.Fatalf("cache %v: took %d, want 2: %v", withCache, n, errs)
		}
		if got := v.Cert("a"); got == nil || !bytes.Equal(got.Encode(), a2) {
			t.Fatalf("cache %v: a is not the newest certificate", withCache)
		}
		ca := cert(v, a2)
		if got := v.ByIP(ca.IP); got == nil || got.Name != "a" || got.Serial != ca.Serial {
			t.Fatalf("cache %v: ByIP(%v) = %v", withCache, ca.IP, got)
		}
		if n, _ := v.AddAll([][]byte{a1}); n != 0 {
			t.Fatalf("cache %v: an older certificate changed the view", withCache)
		}
		// A batch large for the view is placed by one walk through it
		// rather than by binary searches: the same result.
		v = view()
		if n, errs := v.AddAll([][]byte{a1, b}); n != 2 || len(errs) > 0 {
			t.Fatalf("cache %v: took %d, want 2: %v", withCache, n, errs)
		}
		if n, errs := v.AddAll([][]byte{c, b, a2}); n != 2 || len(errs) > 0 { // a replaced, c new, b held
			t.Fatalf("cache %v: took %d, want 2: %v", withCache, n, errs)
		}
		if got := v.Cert("a"); got == nil || !bytes.Equal(got.Encode(), a2) || v.Len() != 3 {
			t.Fatalf("cache %v: after the walk: a is not the newest, or %d peers", withCache, v.Len())
		}
		// An endpoint record after its certificate in one batch; a
		// revocation after the certificate it revokes.
		v = view()
		if n, errs := v.AddAll([][]byte{c, a1, epA1, b, epB, l.Encode()}); n != 6 || len(errs) > 0 { // c, a, its record, b, its record, the revocation
			t.Fatalf("cache %v: took %d, want 6: %v", withCache, n, errs)
		}
		if v.Endpoints("a") == nil || v.Endpoints("b") == nil {
			t.Fatalf("cache %v: endpoint records missing", withCache)
		}
		cc := cert(view(), c)
		if v.Cert("c") != nil || v.ByIP(cc.IP) != nil || v.Len() != 2 {
			t.Fatalf("cache %v: the revoked c is still in the view (%d peers)", withCache, v.Len())
		}
		var names []string
		for _, p := range v.Peers() {
			names = append(names, p.Name)
		}
		if strings.Join(names, ",") != "a,b" {
			t.Fatalf("cache %v: Peers() = %v, want a,b", withCache, names)
		}
		// The ByIP index, built above, follows a key change; the old
		// key's endpoint record goes.
		if n, errs := v.AddAll([][]byte{a2}); n != 1 || len(errs) > 0 {
			t.Fatalf("cache %v: took %d, want 1: %v", withCache, n, errs)
		}
		if v.Endpoints("a") != nil {
			t.Fatalf("cache %v: the endpoint record signed by a's old key stayed", withCache)
		}
		if got := v.ByIP(ca.IP); got == nil || got.Serial != ca.Serial {
			t.Fatalf("cache %v: ByIP did not follow the new certificate of a", withCache)
		}
	}
}
