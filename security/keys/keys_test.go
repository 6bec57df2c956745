package keys

import (
	"crypto/ecdh"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSigningFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	k, err := NewSigning()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "master.key")
	if err := SaveSigning(p, k); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("mode %04o, want 0600", got)
	}
	got, err := LoadSigning(p)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(k) {
		t.Error("loaded key differs")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
}

func TestWGKey(t *testing.T) {
	dir := t.TempDir()
	a, err := NewWG()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "wg.key")
	if err := SaveWG(p, a); err != nil {
		t.Fatal(err)
	}
	got, err := LoadWG(p)
	if err != nil || got != a {
		t.Fatalf("LoadWG = %v, %v", got, err)
	}
	// The public key is X25519's: both sides of a Diffie-Hellman agree.
	b, _ := NewWG()
	pa, _ := ecdh.X25519().NewPrivateKey(a[:])
	pb, _ := ecdh.X25519().NewPrivateKey(b[:])
	bp, ap := b.Public(), a.Public()
	pubB, _ := ecdh.X25519().NewPublicKey(bp[:])
	pubA, _ := ecdh.X25519().NewPublicKey(ap[:])
	s1, _ := pa.ECDH(pubB)
	s2, _ := pb.ECDH(pubA)
	if hex.EncodeToString(s1) != hex.EncodeToString(s2) {
		t.Error("shared secrets differ")
	}
	// Hex (IpcSet) and base64 (wg) forms parse to the same key.
	pub := a.Public()
	if len(pub.Hex()) != 64 || len(a.Hex()) != 64 {
		t.Errorf("hex forms %q %q, want 64 digits", pub.Hex(), a.Hex())
	}
	for _, s := range []string{pub.Hex(), pub.String()} {
		k, err := ParseWGPublic(s)
		if err != nil || k != pub {
			t.Errorf("ParseWGPublic(%q) = %v, %v", s, k, err)
		}
	}
	for _, s := range []string{"", "abc", strings.Repeat("z", 64), strings.Repeat("0", 64), "!" + pub.String()[1:]} {
		if _, err := ParseWGPublic(s); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseWGPublic(%q) = %v, want ErrBadKey", s, err)
		}
	}
}

func TestLoosePermissionsRefused(t *testing.T) {
	dir := t.TempDir()
	k, _ := NewSigning()
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o700} {
		p := filepath.Join(dir, "k")
		if err := SaveSigning(p, k); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadSigning(p)
		if mode == 0o700 {
			if err != nil {
				t.Errorf("mode %04o: %v, want accepted (owner only)", mode, err)
			}
			continue
		}
		if !errors.Is(err, ErrLoosePermissions) {
			t.Fatalf("mode %04o: err %v, want ErrLoosePermissions", mode, err)
		}
		for _, want := range []string{p, fmt.Sprintf("mode %04o", mode)} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	}
}

func TestBadKeyFiles(t *testing.T) {
	dir := t.TempDir()
	wg, _ := NewWG()
	p := filepath.Join(dir, "wg.key")
	if err := SaveWG(p, wg); err != nil {
		t.Fatal(err)
	}
	// A WireGuard key file is not a signing key file.
	if _, err := LoadSigning(p); !errors.Is(err, ErrBadKeyFile) {
		t.Errorf("LoadSigning(wg key) = %v, want ErrBadKeyFile", err)
	}
	for _, content := range []string{"", "garbage\n", signingHeader + "!!!\n", signingHeader + "AAAA\n"} {
		if err := WriteFileAtomic(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadSigning(p); !errors.Is(err, ErrBadKeyFile) {
			t.Errorf("LoadSigning(%q) = %v, want ErrBadKeyFile", content, err)
		}
	}
	if _, err := LoadSigning(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	if _, err := LoadSigning(dir); err == nil {
		t.Error("a directory was accepted as a key file")
	}
}
