package client

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
)

// stormCerts returns a bundle and n certificates signed by its master.
func stormCerts(tb testing.TB, n int) (*bundle.Bundle, [][]byte) {
	tb.Helper()
	dir := tb.TempDir()
	m, err := master.Init(dir, "fill", master.InitOptions{Subnet: netip.MustParsePrefix("240.78.0.0/16")})
	if err != nil {
		tb.Fatal(err)
	}
	mk, err := keys.LoadSigning(master.KeyPath(dir, "fill"))
	if err != nil {
		tb.Fatal(err)
	}
	b := m.Bundle()
	base := binary.BigEndian.Uint32(b.Subnet.Addr().AsSlice())
	now := time.Now()
	raws := make([][]byte, n)
	for i := range raws {
		sk, _ := keys.NewSigning()
		var wg keys.WGPublic
		binary.BigEndian.PutUint64(wg[:], uint64(i+1))
		var ip [4]byte
		binary.BigEndian.PutUint32(ip[:], base+uint32(i)+2)
		c := &cert.Cert{Cluster: b.Cluster, Name: fmt.Sprintf("p%d", i), IP: netip.AddrFrom4(ip), WGKey: wg,
			SignKey: sk.Public().(ed25519.PublicKey), Serial: uint64(1000 + i),
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)}
		if err := c.Sign(mk); err != nil {
			tb.Fatal(err)
		}
		raws[i] = c.Encode()
	}
	return b, raws
}

// BenchmarkViewsFill: what the join storm's simulated peers pay for their
// views: 1,000 views sharing one verify cache each take 1,000 certificates
// in frames of 140 (a 32 KiB Objects frame), borrowed.
func BenchmarkViewsFill(b *testing.B) {
	const views, certs, perFrame = 1000, 1000, 140
	bd, raws := stormCerts(b, certs)
	cache := NewVerifyCache(0)
	b.ResetTimer()
	for range b.N {
		vs := make([]*View, views)
		for i := range vs {
			vs[i] = NewView(bd, nil)
			vs[i].cache = cache
		}
		for i := 0; i < certs; i += perFrame {
			for _, v := range vs {
				v.addAll(raws[i:min(i+perFrame, certs)], true)
			}
		}
		for _, v := range vs {
			if v.Len() != certs {
				b.Fatalf("view holds %d", v.Len())
			}
		}
	}
}
