package token

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/security/internal/sectest"
)

var now = sectest.Now

func sample(t testing.TB, cluster string, uses uint32) *Token {
	tok := &Token{Cluster: cluster, Expires: now.Add(time.Hour), Uses: uses, NamePattern: "node-*", Groups: []string{"workers"}}
	if err := tok.Sign(sectest.Key(1)); err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestStringRoundTrip(t *testing.T) {
	tok := sample(t, "lab", 3)
	s := tok.String()
	if !strings.HasPrefix(s, Prefix) || strings.ContainsAny(s, " \n+/=") {
		t.Errorf("token string %q is not one copy-pasteable word", s)
	}
	got, err := Parse("  " + s + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != tok.ID || got.Uses != 3 || got.NamePattern != "node-*" || !got.Expires.Equal(tok.Expires) || len(got.Groups) != 1 {
		t.Errorf("parsed %+v, want %+v", got, tok)
	}
	if !bytes.Equal(got.Encode(), tok.Encode()) || got.String() != s {
		t.Error("re-encoding differs")
	}
	if err := got.Verify(sectest.Pub(1), "lab", now); err != nil {
		t.Error(err)
	}
	if err := got.CheckName("node-7"); err != nil {
		t.Error(err)
	}
	if err := got.CheckName("head"); !errors.Is(err, ErrName) {
		t.Errorf("CheckName(head) = %v, want ErrName", err)
	}
}

func TestAttacks(t *testing.T) {
	other := sample(t, "other", 1)
	if err := other.Verify(sectest.Pub(1), "lab", now); !errors.Is(err, ErrOtherCluster) {
		t.Errorf("token of another cluster: %v, want ErrOtherCluster", err)
	}
	tok := sample(t, "lab", 1)
	if err := tok.Verify(sectest.Pub(1), "lab", now.Add(time.Hour)); !errors.Is(err, ErrExpired) {
		t.Errorf("expired token: %v, want ErrExpired", err)
	}
	if err := tok.Verify(sectest.Pub(2), "lab", now); !errors.Is(err, ErrWrongSigner) {
		t.Errorf("token checked against another master: %v, want ErrWrongSigner", err)
	}
	for _, s := range []string{"", "pvc1-", "pvc2-" + tok.String()[5:], tok.String() + "A", tok.String()[:len(tok.String())-2], "pvc1-!!!",
		tok.String()[:20] + "\n" + tok.String()[20:]} { // a token broken across lines
		if _, err := Parse(s); !errors.Is(err, ErrFormat) {
			t.Errorf("Parse(%.20q...) = %v, want ErrFormat", s, err)
		}
	}
}

func TestBitFlips(t *testing.T) {
	sectest.FlipEachBit(t, sample(t, "lab", 2).Encode(), func(b []byte) error {
		x, err := Decode(b)
		if err != nil {
			return err
		}
		return x.Verify(sectest.Pub(1), "lab", now)
	})
}

func TestLedgerRefusesUseNPlus1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	tok := sample(t, "lab", 3)
	for i := 0; i < 3; i++ {
		l, err := LoadLedger(path) // reload each time: the count persists
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Use(tok, now); err != nil {
			t.Fatalf("use %d: %v", i+1, err)
		}
	}
	l, err := LoadLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Used(tok.ID); got != 3 {
		t.Errorf("Used = %d, want 3", got)
	}
	err = l.Use(tok, now)
	if !errors.Is(err, ErrUsedUp) || !strings.Contains(err.Error(), "all 3 uses taken") {
		t.Errorf("use 4: %v, want ErrUsedUp naming 3 uses", err)
	}
	// Another token is counted apart.
	if err := l.Use(sample(t, "lab", 1), now); err != nil {
		t.Errorf("another token: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	tok := sample(f, "lab", 2)
	f.Add(tok.String())
	f.Add("pvc1-")
	f.Fuzz(func(t *testing.T, s string) {
		x, err := Parse(s)
		if err != nil {
			return
		}
		if x.String() != strings.TrimSpace(s) {
			t.Fatal("re-encoding differs")
		}
	})
}

func FuzzDecode(f *testing.F) {
	f.Add(sample(f, "lab", 2).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := Decode(b)
		if err != nil {
			return
		}
		if !bytes.Equal(x.Encode(), b) {
			t.Fatal("re-encoding differs")
		}
		_ = x.CheckName("node-1")
	})
}
