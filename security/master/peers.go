package master

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/enroll"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/name"
	"github.com/pvc-project/pvc/security/revoke"
	"github.com/pvc-project/pvc/security/token"
)

// Peer is the master's record of one enrolled peer.
type Peer struct {
	IP      netip.Addr `json:"ip"`
	WGKey   string     `json:"wg_key"`   // base64
	SignKey string     `json:"sign_key"` // base64
	Groups  []string   `json:"groups,omitempty"`
	Serials []uint64   `json:"serials"` // every certificate issued, oldest first
	Revoked bool       `json:"revoked,omitempty"`
}

// peers is the content of peers.json.
type peers struct {
	NextSerial uint64           `json:"next_serial"`
	Peers      map[string]*Peer `json:"peers"`
}

func (m *Master) loadPeers() (*peers, error) {
	p := &peers{NextSerial: 1, Peers: map[string]*Peer{}}
	b, err := os.ReadFile(m.path("peers.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return nil, fmt.Errorf("peers: %w", err)
	}
	if err := json.Unmarshal(b, p); err != nil {
		return nil, fmt.Errorf("peers %s: %w", m.path("peers.json"), err)
	}
	if p.Peers == nil {
		p.Peers = map[string]*Peer{}
	}
	return p, nil
}

func (m *Master) savePeers(p *peers) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("peers: %w", err)
	}
	return keys.WriteFileAtomic(m.path("peers.json"), append(b, '\n'), 0o600)
}

// Peers returns the enrolled peers by name.
func (m *Master) Peers() (map[string]*Peer, error) {
	p, err := m.loadPeers()
	if err != nil {
		return nil, err
	}
	return p.Peers, nil
}

// allocate returns the first free address of the subnet, skipping the
// network and broadcast addresses.
func (m *Master) allocate(p *peers) (netip.Addr, error) {
	used := make(map[netip.Addr]bool, len(p.Peers))
	for _, x := range p.Peers {
		used[x.IP] = true
	}
	sub := m.bundle.Subnet
	for a := sub.Addr().Next(); sub.Contains(a); a = a.Next() {
		if !sub.Contains(a.Next()) { // the broadcast address
			break
		}
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: %v", ErrSubnetFull, sub)
}

// TokenOptions are the choices of `pvcd token`.
type TokenOptions struct {
	Uses        uint32        // zero: 1
	TTL         time.Duration // zero: DefaultTokenTTL
	NamePattern string        // path.Match glob; empty: any name
	Groups      []string
}

// NewToken issues a signed enrollment token.
func (m *Master) NewToken(o TokenOptions) (*token.Token, error) {
	if o.Uses == 0 {
		o.Uses = 1
	}
	if o.TTL == 0 {
		o.TTL = DefaultTokenTTL
	}
	if o.TTL < 0 {
		return nil, fmt.Errorf("token: negative lifetime %v", o.TTL)
	}
	t := &token.Token{Cluster: m.Cluster(), Expires: m.now().Add(o.TTL), Uses: o.Uses,
		NamePattern: o.NamePattern, Groups: o.Groups}
	if err := t.Sign(m.key); err != nil {
		return nil, err
	}
	return t, nil
}

// CertOptions are the choices of `pvcd cert sign` (admission by hand).
type CertOptions struct {
	Name    string
	WGKey   keys.WGPublic
	SignKey ed25519.PublicKey
	Groups  []string
	TTL     time.Duration // zero: DefaultCertTTL
}

// Issue signs a certificate by the administrator's decision, without a
// token. A name enrolled before keeps its virtual IP, even with new keys
// (a reinstalled host), and a revoked name is reinstated (its old serials
// stay revoked).
func (m *Master) Issue(o CertOptions) (*cert.Cert, error) {
	var c *cert.Cert
	err := m.locked(func() error {
		ps, err := m.loadPeers()
		if err != nil {
			return err
		}
		c, err = m.issueLocked(ps, o, true)
		return err
	})
	return c, err
}

// Admit checks an enrollment request (its proof of possession, its token,
// the token's uses and name pattern) and returns the signed certificate.
// Re-enrolling a name with the same keys gives a new certificate with the
// same virtual IP and does not count as a use of the token; the same name
// with other keys is refused (ErrNameTaken), and so is a revoked name
// (ErrPeerRevoked).
func (m *Master) Admit(request []byte) (*cert.Cert, error) {
	req, err := enroll.Decode(request)
	if err != nil {
		return nil, fmt.Errorf("admit: %w", err)
	}
	now := m.now()
	if req.Cluster != m.Cluster() {
		return nil, fmt.Errorf("admit %q: %w: %q, this is %q", req.Name, ErrWrongCluster, req.Cluster, m.Cluster())
	}
	if now.Sub(req.Time) > MaxRequestAge || req.Time.Sub(now) > MaxClockSkew {
		return nil, fmt.Errorf("admit %q: %w: made %s", req.Name, ErrStale, req.Time.UTC().Format(time.RFC3339))
	}
	tok := req.Token
	if err := tok.Verify(m.PublicKey(), m.Cluster(), now); err != nil {
		return nil, fmt.Errorf("admit %q: %w", req.Name, err)
	}
	if err := tok.CheckName(req.Name); err != nil {
		return nil, fmt.Errorf("admit %q: %w", req.Name, err)
	}
	var c *cert.Cert
	err = m.locked(func() error {
		ps, err := m.loadPeers()
		if err != nil {
			return err
		}
		wg, sk := req.WGKey.String(), keys.FormatPublic(req.SignKey)
		if old := ps.Peers[req.Name]; old != nil {
			if old.Revoked {
				return fmt.Errorf("%w: %q (an administrator can reinstate it with pvcd cert sign)", ErrPeerRevoked, req.Name)
			}
			if old.WGKey != wg || old.SignKey != sk {
				return fmt.Errorf("%w: %q", ErrNameTaken, req.Name)
			}
		} else {
			ledger, err := token.LoadLedger(m.path("ledger.json"))
			if err != nil {
				return err
			}
			if _, err := m.allocate(ps); err != nil {
				return err
			}
			if err := ledger.Use(tok, now); err != nil {
				return err
			}
		}
		c, err = m.issueLocked(ps, CertOptions{Name: req.Name, WGKey: req.WGKey, SignKey: req.SignKey, Groups: tok.Groups}, false)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("admit %q: %w", req.Name, err)
	}
	return c, nil
}

// issueLocked records and signs a certificate. manual allows a new key for
// an existing name and reinstates a revoked one.
func (m *Master) issueLocked(ps *peers, o CertOptions, manual bool) (*cert.Cert, error) {
	if err := name.Check(o.Name); err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	if o.TTL == 0 {
		o.TTL = DefaultCertTTL
	}
	if o.TTL < 0 {
		return nil, fmt.Errorf("issue certificate: negative lifetime %v", o.TTL)
	}
	p := ps.Peers[o.Name]
	if p == nil {
		ip, err := m.allocate(ps)
		if err != nil {
			return nil, err
		}
		p = &Peer{IP: ip}
	} else if manual {
		p.Revoked = false
	}
	p.WGKey, p.SignKey, p.Groups = o.WGKey.String(), keys.FormatPublic(o.SignKey), o.Groups
	now := m.now()
	c := &cert.Cert{Cluster: m.Cluster(), Name: o.Name, IP: p.IP, WGKey: o.WGKey, SignKey: o.SignKey,
		Groups: o.Groups, Serial: ps.NextSerial, NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(o.TTL)}
	if err := c.Sign(m.key); err != nil {
		return nil, err
	}
	ps.NextSerial++
	p.Serials = append(p.Serials, c.Serial)
	ps.Peers[o.Name] = p
	if err := m.savePeers(ps); err != nil {
		return nil, err
	}
	return c, nil
}

// Revoke revokes a peer by name (all its serials, and refuses its
// re-enrollment) or one serial, and returns the new revocation list in
// force with the serials it added.
func (m *Master) Revoke(target string) (*revoke.List, []uint64, error) {
	var l *revoke.List
	var added []uint64
	err := m.locked(func() error {
		ps, err := m.loadPeers()
		if err != nil {
			return err
		}
		if p := ps.Peers[target]; p != nil {
			p.Revoked = true
			added = slices.Clone(p.Serials)
		} else if n, err := strconv.ParseUint(target, 10, 64); err == nil && n > 0 && n < ps.NextSerial {
			added = []uint64{n}
		} else {
			return fmt.Errorf("%w: %q", ErrUnknownPeer, target)
		}
		if err := m.savePeers(ps); err != nil {
			return err
		}
		l, err = m.revise(added)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("revoke: %w", err)
	}
	sort.Slice(added, func(i, j int) bool { return added[i] < added[j] })
	return l, added, nil
}
