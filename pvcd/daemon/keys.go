package daemon

import (
	"crypto/ed25519"
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/pvc-project/pvc/security/keys"
)

// Files in the state directory.
const (
	WGKeyFile   = "wg.key"   // WireGuard private key (0600)
	SignKeyFile = "sign.key" // Ed25519 signing key (0600)
	CertFile    = "cert"     // the host's signed certificate
	BundleFile  = "bundle"   // the cluster bundle the host trusts
)

// HostKeys loads the host's keys from dir, creating both if neither
// exists. It refuses to replace one key when only the other exists: that
// would change the host's identity behind its certificate.
func HostKeys(dir string) (wg keys.WGPrivate, sk ed25519.PrivateKey, created bool, err error) {
	wgPath, skPath := filepath.Join(dir, WGKeyFile), filepath.Join(dir, SignKeyFile)
	_, e1 := os.Stat(wgPath)
	_, e2 := os.Stat(skPath)
	if errors.Is(e1, fs.ErrNotExist) && errors.Is(e2, fs.ErrNotExist) {
		if wg, err = keys.NewWG(); err != nil {
			return wg, nil, false, err
		}
		if sk, err = keys.NewSigning(); err != nil {
			return wg, nil, false, err
		}
		if err := keys.SaveWG(wgPath, wg); err != nil {
			return wg, nil, false, err
		}
		if err := keys.SaveSigning(skPath, sk); err != nil {
			return wg, nil, false, err
		}
		return wg, sk, true, nil
	}
	if wg, err = keys.LoadWG(wgPath); err != nil {
		return wg, nil, false, err
	}
	if sk, err = keys.LoadSigning(skPath); err != nil {
		return wg, nil, false, err
	}
	return wg, sk, false, nil
}
