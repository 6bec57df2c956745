package keys

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Key file headers: a key file is one line, HEADER:BASE64 and a newline.
const (
	signingHeader = "pvc-ed25519-private:"
	wgHeader      = "pvc-x25519-private:"
)

// maxKeyFile caps what ReadPrivateFile reads.
const maxKeyFile = 64 << 10

// WriteFileAtomic writes data to path with mode perm: it writes a temporary
// file in the same directory, syncs it and renames it over path, so readers
// see either the old or the new content, never a partial file.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ReadPrivateFile reads a file that holds secrets. It refuses a file whose
// mode gives any access to its group or to others (ErrLoosePermissions,
// naming the file and its mode), and anything that is not a regular file.
func ReadPrivateFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat() // the opened file, not the path: no race with a swap
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("read key %s: %w: not a regular file", path, ErrBadKeyFile)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("read key %s: %w: mode %04o, want 0600 (chmod 600 %s)", path, ErrLoosePermissions, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w", path, err)
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("read key %s: %w: larger than %d bytes", path, ErrBadKeyFile, maxKeyFile)
	}
	return b, nil
}

func encodeKeyFile(header string, b []byte) []byte {
	return []byte(header + base64.StdEncoding.EncodeToString(b) + "\n")
}

func decodeKeyFile(path, header string, data []byte, size int) ([]byte, error) {
	line := bytes.TrimSpace(data)
	if !bytes.HasPrefix(line, []byte(header)) {
		return nil, fmt.Errorf("read key %s: %w: want a line starting %q", path, ErrBadKeyFile, header)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(string(line[len(header):]))
	if err != nil || len(b) != size {
		return nil, fmt.Errorf("read key %s: %w: the key after %q is not base64 of %d bytes", path, ErrBadKeyFile, header, size)
	}
	return b, nil
}

// SaveSigning writes an Ed25519 private key file (mode 0600).
func SaveSigning(path string, k ed25519.PrivateKey) error {
	return WriteFileAtomic(path, encodeKeyFile(signingHeader, k.Seed()), 0o600)
}

// LoadSigning reads an Ed25519 private key file written by SaveSigning.
func LoadSigning(path string) (ed25519.PrivateKey, error) {
	data, err := ReadPrivateFile(path)
	if err != nil {
		return nil, err
	}
	seed, err := decodeKeyFile(path, signingHeader, data, ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// SaveWG writes a WireGuard private key file (mode 0600).
func SaveWG(path string, k WGPrivate) error {
	return WriteFileAtomic(path, encodeKeyFile(wgHeader, k[:]), 0o600)
}

// LoadWG reads a WireGuard private key file written by SaveWG.
func LoadWG(path string) (WGPrivate, error) {
	data, err := ReadPrivateFile(path)
	if err != nil {
		return WGPrivate{}, err
	}
	b, err := decodeKeyFile(path, wgHeader, data, Size)
	if err != nil {
		return WGPrivate{}, err
	}
	var k WGPrivate
	copy(k[:], b)
	return k, nil
}
