package endpoint

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/pvc-project/pvc/security/signed"
)

func sample() []Endpoint {
	return []Endpoint{
		{Host, netip.MustParseAddrPort("198.18.1.5:51820")},
		{Observed, netip.MustParseAddrPort("203.0.113.7:40000")},
		{UPnP, netip.MustParseAddrPort("[2001:db8::1]:51820")},
	}
}

func TestSignDecodeVerify(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	other, _, _ := ed25519.GenerateKey(nil)
	r := &Record{Cluster: "lab", Name: "node1", Version: 42, Endpoints: sample()}
	if err := r.Sign(priv); err != nil {
		t.Fatal(err)
	}
	got, err := Decode(r.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "node1" || got.Version != 42 || !reflect.DeepEqual(got.Endpoints, sample()) {
		t.Errorf("got %+v", got)
	}
	if err := got.Verify(pub); err != nil {
		t.Errorf("verify: %v", err)
	}
	if err := got.Verify(other); !errors.Is(err, ErrBadSignature) {
		t.Errorf("verify with another key: got %v, want ErrBadSignature", err)
	}
	b := r.Encode()
	for i := range len(b) * 8 {
		c := bytes.Clone(b)
		c[i/8] ^= 1 << (i % 8)
		if r2, err := Decode(c); err == nil && r2.Verify(pub) == nil {
			t.Fatalf("bit %d flipped: still verifies", i)
		}
	}
}

func TestBadInput(t *testing.T) {
	if _, err := EncodeBody(make([]Endpoint, Max+1)); !errors.Is(err, ErrFormat) {
		t.Errorf("too many: %v", err)
	}
	if _, err := EncodeBody([]Endpoint{{Kind: 9, Addr: netip.MustParseAddrPort("1.2.3.4:5")}}); !errors.Is(err, ErrFormat) {
		t.Errorf("bad kind: %v", err)
	}
	for _, b := range [][]byte{nil, {2, 0}, {1, 1, 1, 5}, {1, 1, 9, 4, 1, 2, 3, 4, 0, 1}, {1, 0, 0}} {
		if _, err := DecodeBody(b); !errors.Is(err, ErrFormat) {
			t.Errorf("%x: got %v, want ErrFormat", b, err)
		}
	}
	o, _ := signed.Sign(signed.KindCert, "lab", "x", 1, []byte{1}, ed25519.NewKeyFromSeed(make([]byte, 32)))
	if _, err := FromObject(o); !errors.Is(err, ErrFormat) {
		t.Errorf("a cert envelope: %v", err)
	}
}

// FuzzDecodeBody: whatever decodes encodes back to the same bytes.
func FuzzDecodeBody(f *testing.F) {
	b, _ := EncodeBody(sample())
	f.Add(b)
	f.Add([]byte{1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		eps, err := DecodeBody(b)
		if err != nil {
			return
		}
		got, err := EncodeBody(eps)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("round trip: %x, %v; want %x", got, err, b)
		}
	})
}
