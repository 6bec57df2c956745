package revoke

import (
	"bytes"
	"errors"
	"testing"

	"github.com/pvc-project/pvc/security/internal/sectest"
)

func sample(t testing.TB, version uint64, serials ...uint64) *List {
	l := &List{Cluster: "lab", Version: version, Serials: serials}
	if err := l.Sign(sectest.Key(1)); err != nil {
		t.Fatal(err)
	}
	return l
}

func TestRoundTrip(t *testing.T) {
	l := sample(t, 3, 9, 2, 5, 2)
	got, err := Decode(l.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 3 || len(got.Serials) != 3 || got.Serials[0] != 2 || got.Serials[2] != 9 {
		t.Errorf("decoded %+v", got)
	}
	if !bytes.Equal(got.Encode(), l.Encode()) {
		t.Error("re-encoding differs")
	}
	if err := got.Verify(sectest.Pub(1), "lab"); err != nil {
		t.Error(err)
	}
	for s, want := range map[uint64]bool{2: true, 5: true, 9: true, 1: false, 3: false, 10: false} {
		if got.Revoked(s) != want {
			t.Errorf("Revoked(%d) = %v", s, !want)
		}
	}
	var none *List
	if none.Revoked(1) {
		t.Error("nil list revokes")
	}
	n := got.With(4, 7)
	if n.Version != 4 || !n.Revoked(7) || !n.Revoked(2) || got.Revoked(7) {
		t.Errorf("With: %+v (original %+v)", n, got)
	}
}

func TestAttacks(t *testing.T) {
	l := sample(t, 3, 1)
	if err := l.Verify(sectest.Pub(2), "lab"); !errors.Is(err, ErrWrongSigner) {
		t.Errorf("other master: %v", err)
	}
	if err := l.Verify(sectest.Pub(1), "other"); !errors.Is(err, ErrOtherCluster) {
		t.Errorf("other cluster: %v", err)
	}
	for _, older := range []uint64{1, 3} {
		if err := Newer(l, sample(t, older)); !errors.Is(err, ErrRollback) {
			t.Errorf("version %d after 3: %v, want ErrRollback", older, err)
		}
	}
	if err := Newer(l, sample(t, 4)); err != nil {
		t.Errorf("version 4 after 3: %v", err)
	}
	if err := Newer(nil, sample(t, 1)); err != nil {
		t.Errorf("first list: %v", err)
	}
}

func TestBitFlips(t *testing.T) {
	sectest.FlipEachBit(t, sample(t, 2, 1, 5, 1<<40).Encode(), func(b []byte) error {
		x, err := Decode(b)
		if err != nil {
			return err
		}
		return x.Verify(sectest.Pub(1), "lab")
	})
}

func FuzzDecode(f *testing.F) {
	f.Add(sample(f, 2, 1, 5).Encode())
	f.Add(sample(f, 1).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := Decode(b)
		if err != nil {
			return
		}
		if !bytes.Equal(x.Encode(), b) {
			t.Fatal("re-encoding differs")
		}
	})
}
