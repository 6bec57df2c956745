package signed

import (
	"bytes"
	"errors"
	"testing"

	"github.com/pvc-project/pvc/security/internal/sectest"
)

func sample(t testing.TB) *Object {
	o, err := Sign(KindCert, "lab", "node1", 7, []byte("body bytes"), sectest.Key(1))
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestRoundTrip(t *testing.T) {
	o := sample(t)
	got, err := Decode(o.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.Kind != KindCert || got.Cluster != "lab" || got.Subject != "node1" || got.Version != 7 || string(got.Body) != "body bytes" {
		t.Errorf("decoded %+v", got)
	}
	if !bytes.Equal(got.Encode(), o.Encode()) {
		t.Error("re-encoding differs")
	}
	if err := got.Verify(sectest.Pub(1)); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

func TestWrongSigner(t *testing.T) {
	o := sample(t)
	if err := o.Verify(sectest.Pub(2)); !errors.Is(err, ErrWrongSigner) {
		t.Errorf("Verify(other key) = %v, want ErrWrongSigner", err)
	}
}

// A signature of one kind must not verify as another kind, even when the
// bytes are otherwise identical (domain separation).
func TestKindConfusion(t *testing.T) {
	o := sample(t)
	b := bytes.Clone(o.Encode())
	b[4] = byte(KindPolicy)
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Verify(o.Signer); !errors.Is(err, ErrBadSignature) {
		t.Errorf("cert signature as a policy: %v, want ErrBadSignature", err)
	}
	if _, err := DecodeKind(o.Encode(), KindToken); !errors.Is(err, ErrKind) {
		t.Errorf("DecodeKind(cert, token) = %v, want ErrKind", err)
	}
}

func TestBitFlips(t *testing.T) {
	o := sample(t)
	pub := o.Signer
	sectest.FlipEachBit(t, o.Encode(), func(b []byte) error {
		x, err := Decode(b)
		if err != nil {
			return err
		}
		return x.Verify(pub)
	})
}

func TestStrictDecode(t *testing.T) {
	enc := sample(t).Encode()
	for name, b := range map[string][]byte{
		"empty":     nil,
		"truncated": enc[:len(enc)-1],
		"trailing":  append(bytes.Clone(enc), 0),
		"magic":     append([]byte("PVC\x02"), enc[4:]...),
	} {
		if _, err := Decode(b); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
	if _, err := Sign(KindCert, "Bad_Cluster", "x", 1, nil, sectest.Key(1)); !errors.Is(err, ErrFormat) {
		t.Errorf("bad cluster name: %v, want ErrFormat", err)
	}
	if _, err := Sign(Kind(99), "lab", "x", 1, nil, sectest.Key(1)); !errors.Is(err, ErrFormat) {
		t.Errorf("unknown kind: %v, want ErrFormat", err)
	}
	if _, err := Sign(KindCert, "lab", "x", 1, make([]byte, MaxBody+1), sectest.Key(1)); !errors.Is(err, ErrFormat) {
		t.Errorf("huge body: %v, want ErrFormat", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(sample(f).Encode())
	f.Add([]byte("PVC\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := Decode(b)
		if err != nil {
			return
		}
		if !bytes.Equal(o.Encode(), b) {
			t.Fatalf("re-encoding differs")
		}
		_ = o.VerifySelf()
	})
}
