package enroll

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/pvc-project/pvc/security/internal/sectest"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/token"
)

func sample(t testing.TB) *Request {
	tok := &token.Token{Cluster: "lab", Expires: sectest.Now.Add(time.Hour), Uses: 1}
	if err := tok.Sign(sectest.Key(1)); err != nil {
		t.Fatal(err)
	}
	var wg keys.WGPublic
	wg[3] = 1
	r, err := New(tok, "node1", wg, sectest.Key(7), sectest.Now)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRoundTrip(t *testing.T) {
	r := sample(t)
	got, err := Decode(r.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "node1" || got.Cluster != "lab" || got.WGKey != r.WGKey || !got.SignKey.Equal(sectest.Pub(7)) ||
		!got.Time.Equal(sectest.Now) || got.Nonce != r.Nonce || got.Token.ID != r.Token.ID {
		t.Errorf("decoded %+v, want %+v", got, r)
	}
	if !bytes.Equal(got.Encode(), r.Encode()) {
		t.Error("re-encoding differs")
	}
}

func TestBitFlips(t *testing.T) {
	// Every flip is refused by Decode itself (proof of possession), or, in
	// the embedded token, by the token's master signature.
	sectest.FlipEachBit(t, sample(t).Encode(), func(b []byte) error {
		r, err := Decode(b)
		if err != nil {
			return err
		}
		return r.Token.Verify(sectest.Pub(1), "lab", sectest.Now)
	})
}

func TestNotSignedByNamedKey(t *testing.T) {
	r := sample(t)
	// An attacker replaces the signing key with its own but cannot sign
	// with the victim's: re-sign the body under another key, then put the
	// victim's key back in the signer field.
	b := bytes.Clone(r.Encode())
	other := sample(t)
	if err := other.Sign(sectest.Key(8)); err != nil {
		t.Fatal(err)
	}
	ob := other.Encode()
	copy(b[len(b)-64:], ob[len(ob)-64:])
	if _, err := Decode(b); !errors.Is(err, ErrBadSignature) {
		t.Errorf("Decode = %v, want ErrBadSignature", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(sample(f).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err != nil {
			return
		}
		if !bytes.Equal(r.Encode(), b) {
			t.Fatal("re-encoding differs")
		}
	})
}
