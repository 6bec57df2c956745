package client

import (
	"bytes"
	"crypto/ed25519"
	"testing"

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
