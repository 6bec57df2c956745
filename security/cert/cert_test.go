package cert

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/pvc-project/pvc/security/internal/sectest"
	"github.com/pvc-project/pvc/security/keys"
)

var now = sectest.Now

type revoked map[uint64]bool

func (r revoked) Revoked(s uint64) bool { return r[s] }

func sample(cluster string, master ed25519.PrivateKey) *Cert {
	var wg keys.WGPublic
	wg[0] = 9
	return &Cert{
		Cluster: cluster, Name: "node1", IP: netip.MustParseAddr("240.7.0.1"), WGKey: wg,
		SignKey: sectest.Pub(5), Groups: []string{"workers", "gpu", "workers"}, Serial: 42,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
	}
}

func signedSample(t testing.TB) *Cert {
	c := sample("lab", sectest.Key(1))
	if err := c.Sign(sectest.Key(1)); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRoundTrip(t *testing.T) {
	c := signedSample(t)
	got, err := Decode(c.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "node1" || got.Cluster != "lab" || got.IP != c.IP || got.WGKey != c.WGKey ||
		!got.SignKey.Equal(c.SignKey) || got.Serial != 42 || !got.NotBefore.Equal(c.NotBefore) || !got.NotAfter.Equal(c.NotAfter) {
		t.Errorf("decoded %+v, want %+v", got, c)
	}
	if want := []string{"gpu", "workers"}; len(got.Groups) != 2 || got.Groups[0] != want[0] || got.Groups[1] != want[1] {
		t.Errorf("groups %v, want %v (sorted, unique)", got.Groups, want)
	}
	if !got.InGroup("gpu") || got.InGroup("x") {
		t.Error("InGroup wrong")
	}
	if !bytes.Equal(got.Encode(), c.Encode()) {
		t.Error("re-encoding differs")
	}
	if err := got.Verify(sectest.Pub(1), "lab", now, nil); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

func TestAttacks(t *testing.T) {
	good := signedSample(t)
	other := sample("lab", nil)
	if err := other.Sign(sectest.Key(2)); err != nil {
		t.Fatal(err)
	}
	otherCluster := sample("other", nil)
	if err := otherCluster.Sign(sectest.Key(1)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		c    *Cert
		at   time.Time
		rev  Revocation
		want error
	}{
		{"signed by another master", other, now, nil, ErrWrongSigner},
		{"of another cluster", otherCluster, now, nil, ErrOtherCluster},
		{"expired", good, now.Add(25 * time.Hour), nil, ErrExpired},
		{"expired at the second", good, good.NotAfter, nil, ErrExpired},
		{"not yet valid", good, now.Add(-2 * time.Hour), nil, ErrNotYetValid},
		{"revoked", good, now, revoked{42: true}, ErrRevoked},
	} {
		c, err := Decode(tc.c.Encode())
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Verify(sectest.Pub(1), "lab", tc.at, tc.rev); !errors.Is(err, tc.want) {
			t.Errorf("%s: Verify = %v, want %v", tc.name, err, tc.want)
		}
		// CheckValid: everything but the signature.
		err = c.CheckValid("lab", tc.at, tc.rev)
		if tc.want == ErrWrongSigner {
			if err != nil {
				t.Errorf("%s: CheckValid = %v, want nil (it does not check the signature)", tc.name, err)
			}
		} else if !errors.Is(err, tc.want) {
			t.Errorf("%s: CheckValid = %v, want %v", tc.name, err, tc.want)
		}
	}
	if err := good.Verify(sectest.Pub(1), "lab", now, revoked{41: true}); err != nil {
		t.Errorf("other serial revoked: %v", err)
	}
}

func TestBitFlips(t *testing.T) {
	sectest.FlipEachBit(t, signedSample(t).Encode(), func(b []byte) error {
		c, err := Decode(b)
		if err != nil {
			return err
		}
		return c.Verify(sectest.Pub(1), "lab", now, nil)
	})
}

func TestTamperedBodyIsBadSignature(t *testing.T) {
	b := bytes.Clone(signedSample(t).Encode())
	b[len(b)-64-1] ^= 0x01 // last byte of the last group name: "workers" -> "workerr"
	c, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Verify(sectest.Pub(1), "lab", now, nil); !errors.Is(err, ErrBadSignature) {
		t.Errorf("Verify = %v, want ErrBadSignature", err)
	}
}

func TestSignRefusesBadFields(t *testing.T) {
	for name, mod := range map[string]func(*Cert){
		"bad name":       func(c *Cert) { c.Name = "Node_1" },
		"ip outside 240": func(c *Cert) { c.IP = netip.MustParseAddr("198.18.0.1") },
		"ipv6":           func(c *Cert) { c.IP = netip.MustParseAddr("::1") },
		"no wg key":      func(c *Cert) { c.WGKey = keys.WGPublic{} },
		"short sign key": func(c *Cert) { c.SignKey = c.SignKey[:5] },
		"bad group":      func(c *Cert) { c.Groups = []string{"Bad"} },
		"empty window":   func(c *Cert) { c.NotAfter = c.NotBefore },
	} {
		c := sample("lab", nil)
		mod(c)
		if err := c.Sign(sectest.Key(1)); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: Sign = %v, want ErrFormat", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(signedSample(f).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Decode(b)
		if err != nil {
			return
		}
		if !bytes.Equal(c.Encode(), b) {
			t.Fatal("re-encoding differs")
		}
		// Re-signing the decoded fields gives the same body.
		d := *c
		if err := d.Sign(sectest.Key(1)); err != nil {
			t.Fatalf("decoded certificate does not sign again: %v", err)
		}
		if !bytes.Equal(d.Object().Body, c.Object().Body) {
			t.Fatal("body not canonical")
		}
		_ = c.Verify(sectest.Pub(1), "lab", now, nil)
	})
}

// BenchmarkVerify measures certificate verifications per second (decode +
// signature + checks), with a reference: the bare Ed25519 verification.
func BenchmarkVerify(b *testing.B) {
	enc := signedSample(b).Encode()
	rev := revoked{1: true}
	b.Run("decode+verify", func(b *testing.B) {
		for b.Loop() {
			c, err := Decode(enc)
			if err != nil {
				b.Fatal(err)
			}
			if err := c.Verify(sectest.Pub(1), "lab", now, rev); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifies/s")
	})
	b.Run("ed25519-reference", func(b *testing.B) {
		msg := make([]byte, len(enc))
		sig := ed25519.Sign(sectest.Key(1), msg)
		for b.Loop() {
			if !ed25519.Verify(sectest.Pub(1), msg, sig) {
				b.Fatal("bad")
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifies/s")
	})
}
