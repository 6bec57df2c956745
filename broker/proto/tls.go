package proto

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// ErrWrongBrokerKey is returned by a client's TLS handshake when the broker's
// key is not the one pinned in the cluster bundle.
var ErrWrongBrokerKey = errors.New("broker key differs from the one pinned in the cluster bundle")

// ServerTLS returns the broker's TLS 1.3 configuration: a self-signed X.509
// certificate over its Ed25519 key, made now. Clients pin the key, not the
// certificate, so a new certificate at each start is fine.
func ServerTLS(key ed25519.PrivateKey) (*tls.Config, error) {
	cert, err := selfSigned(key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{ALPN},
		// Full-size records from the first byte: a subscriber's snapshot
		// is hundreds of KiB, and the small first records of dynamic
		// sizing (meant for a browser's first paint) cost one seal and
		// one system call per ~1 KiB.
		DynamicRecordSizingDisabled: true,
	}, nil
}

func selfSigned(key ed25519.PrivateKey) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "pvc-broker"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("broker certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// ClientTLS returns a client configuration that accepts only a broker whose
// certificate carries the pinned Ed25519 key (no web PKI). With pinned nil
// any key is accepted; the caller reads it with PeerKey (a replica dialing an
// address no bundle pins).
func ClientTLS(pinned ed25519.PublicKey) *tls.Config {
	return &tls.Config{
		MinVersion:                  tls.VersionTLS13,
		NextProtos:                  []string{ALPN},
		DynamicRecordSizingDisabled: true, // as the broker's (ServerTLS)
		InsecureSkipVerify:          true, // replaced by the pin check below
		VerifyConnection: func(cs tls.ConnectionState) error {
			key, err := PeerKey(cs)
			if err != nil {
				return err
			}
			if pinned != nil && !bytes.Equal(key, pinned) {
				return ErrWrongBrokerKey
			}
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("broker speaks %q, want %q", cs.NegotiatedProtocol, ALPN)
			}
			return nil
		},
	}
}

// PeerKey returns the Ed25519 key of the broker's certificate. TLS 1.3 has
// already checked that the broker holds its private half (CertificateVerify),
// so the key is all that needs checking.
func PeerKey(cs tls.ConnectionState) (ed25519.PublicKey, error) {
	if len(cs.PeerCertificates) != 1 {
		return nil, fmt.Errorf("broker sent %d certificates, want 1", len(cs.PeerCertificates))
	}
	c := cs.PeerCertificates[0]
	key, ok := c.PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("broker certificate is not over an Ed25519 key")
	}
	return key, nil
}

// Exporter returns the session's keying material that Auth signatures bind to.
func Exporter(cs tls.ConnectionState) ([]byte, error) {
	return cs.ExportKeyingMaterial(ExporterLabel, nil, ExporterSize)
}
