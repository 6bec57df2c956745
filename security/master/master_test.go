package master

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/enroll"
	"github.com/pvc-project/pvc/security/internal/sectest"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/policy"
	"github.com/pvc-project/pvc/security/token"
)

func newMaster(t *testing.T) (*Master, string) {
	dir := t.TempDir()
	m, err := Init(dir, "lab", InitOptions{Subnet: netip.MustParsePrefix("240.7.0.0/16"),
		Brokers: []bundle.Broker{{Addr: "203.0.113.10:7000"}}})
	if err != nil {
		t.Fatal(err)
	}
	m.SetClock(func() time.Time { return sectest.Now })
	return m, dir
}

func request(t *testing.T, tok *token.Token, name string, seed byte, at time.Time) []byte {
	var wg keys.WGPrivate
	wg[0] = seed
	r, err := enroll.New(tok, name, wg.Public(), sectest.Key(seed), at)
	if err != nil {
		t.Fatal(err)
	}
	return r.Encode()
}

func TestInitAndOpen(t *testing.T) {
	m, dir := newMaster(t)
	for _, p := range []string{"lab.key", "lab.cluster", "lab.state/cluster", "lab.state/revocation", "lab.state/policy"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Error(err)
		}
	}
	st, _ := os.Stat(filepath.Join(dir, "lab.key"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %04o", st.Mode().Perm())
	}
	m2, err := Open(KeyPath(dir, "lab"))
	if err != nil {
		t.Fatal(err)
	}
	if !m2.PublicKey().Equal(m.PublicKey()) || m2.Bundle().Subnet != m.Bundle().Subnet {
		t.Error("reopened master differs")
	}
	if _, err := Init(dir, "lab", InitOptions{}); !errors.Is(err, ErrExists) {
		t.Errorf("second init: %v, want ErrExists", err)
	}
	// A second cluster in the same dir gets a subnet that does not overlap.
	o, err := Init(dir, "lab2", InitOptions{Taken: []netip.Prefix{m.Bundle().Subnet}})
	if err != nil {
		t.Fatal(err)
	}
	if o.Bundle().Subnet.Overlaps(m.Bundle().Subnet) || o.Bundle().Domain != "lab2.pvc" {
		t.Errorf("second cluster: %v %s", o.Bundle().Subnet, o.Bundle().Domain)
	}
	if _, err := Init(dir, "lab3", InitOptions{Subnet: netip.MustParsePrefix("240.7.0.0/16"), Taken: []netip.Prefix{m.Bundle().Subnet}}); err == nil {
		t.Error("overlapping subnet accepted")
	}
	if err := os.Chmod(KeyPath(dir, "lab"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(KeyPath(dir, "lab")); !errors.Is(err, keys.ErrLoosePermissions) {
		t.Errorf("open with loose key: %v", err)
	}
	os.Chmod(KeyPath(dir, "lab"), 0o600)
	os.Rename(filepath.Join(dir, "lab.state"), filepath.Join(dir, "moved"))
	if _, err := Open(KeyPath(dir, "lab")); !errors.Is(err, ErrNoState) {
		t.Errorf("open without state: %v, want ErrNoState", err)
	}
}

func TestAdmit(t *testing.T) {
	m, _ := newMaster(t)
	tok, err := m.NewToken(TokenOptions{Uses: 2, NamePattern: "node-*", Groups: []string{"workers"}})
	if err != nil {
		t.Fatal(err)
	}
	c1, err := m.Admit(request(t, tok, "node-1", 11, sectest.Now))
	if err != nil {
		t.Fatal(err)
	}
	if c1.IP != netip.MustParseAddr("240.7.0.1") || c1.Serial != 1 || !c1.InGroup("workers") {
		t.Errorf("first cert %v serial %d groups %v", c1.IP, c1.Serial, c1.Groups)
	}
	if err := c1.Verify(m.PublicKey(), "lab", sectest.Now, nil); err != nil {
		t.Error(err)
	}
	// Same name, same keys: same IP, new serial, no use counted.
	again, err := m.Admit(request(t, tok, "node-1", 11, sectest.Now))
	if err != nil || again.IP != c1.IP || again.Serial != 2 {
		t.Fatalf("re-enroll: %v, %v", again, err)
	}
	// Same name, other keys: refused.
	if _, err := m.Admit(request(t, tok, "node-1", 12, sectest.Now)); !errors.Is(err, ErrNameTaken) {
		t.Errorf("name taken: %v", err)
	}
	if _, err := m.Admit(request(t, tok, "head", 13, sectest.Now)); !errors.Is(err, token.ErrName) {
		t.Errorf("name outside pattern: %v", err)
	}
	c2, err := m.Admit(request(t, tok, "node-2", 14, sectest.Now))
	if err != nil || c2.IP != netip.MustParseAddr("240.7.0.2") {
		t.Fatalf("second peer: %v, %v", c2, err)
	}
	// The third new peer is the (N+1)th use.
	if _, err := m.Admit(request(t, tok, "node-3", 15, sectest.Now)); !errors.Is(err, token.ErrUsedUp) {
		t.Errorf("use 3 of 2: %v, want ErrUsedUp", err)
	}
	// Stale and future requests.
	tok2, _ := m.NewToken(TokenOptions{})
	if _, err := m.Admit(request(t, tok2, "x", 16, sectest.Now.Add(-time.Hour))); !errors.Is(err, ErrStale) {
		t.Errorf("old request: %v", err)
	}
	if _, err := m.Admit(request(t, tok2, "x", 16, sectest.Now.Add(time.Hour))); !errors.Is(err, ErrStale) {
		t.Errorf("future request: %v", err)
	}
	// Expired token.
	m.SetClock(func() time.Time { return sectest.Now.Add(48 * time.Hour) })
	if _, err := m.Admit(request(t, tok2, "x", 16, sectest.Now.Add(48*time.Hour))); !errors.Is(err, token.ErrExpired) {
		t.Errorf("expired token: %v", err)
	}
	m.SetClock(func() time.Time { return sectest.Now })
	// Token of another master / cluster.
	o, err := Init(t.TempDir(), "other", InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	otok, _ := o.NewToken(TokenOptions{})
	if _, err := m.Admit(request(t, otok, "y", 17, sectest.Now)); !errors.Is(err, ErrWrongCluster) {
		t.Errorf("token of another cluster: %v", err)
	}
	forged := &token.Token{Cluster: "lab", Expires: sectest.Now.Add(time.Hour), Uses: 9}
	forged.Sign(sectest.Key(99))
	if _, err := m.Admit(request(t, forged, "y", 17, sectest.Now)); !errors.Is(err, token.ErrWrongSigner) {
		t.Errorf("forged token: %v", err)
	}
}

func TestRevokeAndManualIssue(t *testing.T) {
	m, _ := newMaster(t)
	tok, _ := m.NewToken(TokenOptions{Uses: 5})
	c1, _ := m.Admit(request(t, tok, "a", 21, sectest.Now))
	c1b, _ := m.Admit(request(t, tok, "a", 21, sectest.Now))
	c2, _ := m.Admit(request(t, tok, "b", 22, sectest.Now))
	l, added, err := m.Revoke("a")
	if err != nil {
		t.Fatal(err)
	}
	if l.Version != 2 || len(added) != 2 || !l.Revoked(c1.Serial) || !l.Revoked(c1b.Serial) || l.Revoked(c2.Serial) {
		t.Errorf("after revoke a: v%d %v", l.Version, l.Serials)
	}
	if err := c1.Verify(m.PublicKey(), "lab", sectest.Now, l); !errors.Is(err, cert.ErrRevoked) {
		t.Errorf("revoked cert verifies: %v", err)
	}
	if _, err := m.Admit(request(t, tok, "a", 21, sectest.Now)); !errors.Is(err, ErrPeerRevoked) {
		t.Errorf("revoked peer re-enrolls: %v", err)
	}
	l, _, err = m.Revoke("3")
	if err != nil || !l.Revoked(3) || l.Version != 3 {
		t.Errorf("revoke serial 3: %v %v", l, err)
	}
	for _, bad := range []string{"nobody", "0", "999"} {
		if _, _, err := m.Revoke(bad); !errors.Is(err, ErrUnknownPeer) {
			t.Errorf("Revoke(%q) = %v, want ErrUnknownPeer", bad, err)
		}
	}
	// The administrator reinstates "a" with new keys: same IP.
	var wg keys.WGPrivate
	wg[0] = 30
	c, err := m.Issue(CertOptions{Name: "a", WGKey: wg.Public(), SignKey: sectest.Pub(30), TTL: time.Hour})
	if err != nil || c.IP != c1.IP || !c.NotAfter.Equal(sectest.Now.Add(time.Hour)) {
		t.Errorf("manual issue: %v, %v", c, err)
	}
	if cur, err := m.Revocation(); err != nil || cur.Version != 3 {
		t.Errorf("revocation in force: %v, %v", cur, err)
	}
}

func TestSignPolicy(t *testing.T) {
	m, _ := newMaster(t)
	g, err := policy.ParseGlobal([]byte("default deny\nallow from any to any proto icmp\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SignPolicy(g); err != nil {
		t.Fatal(err)
	}
	if g.Version != 2 || g.Cluster != "lab" {
		t.Errorf("signed policy v%d of %q, want v2 of lab (v1 is init's)", g.Version, g.Cluster)
	}
	cur, err := m.Policy()
	if err != nil || cur.Version != 2 || len(cur.Rules) != 1 {
		t.Errorf("policy in force: %v, %v", cur, err)
	}
}

func TestSubnetFull(t *testing.T) {
	dir := t.TempDir()
	m, err := Init(dir, "tiny", InitOptions{Subnet: netip.MustParsePrefix("240.9.9.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	ps := &peers{NextSerial: 1, Peers: map[string]*Peer{}}
	for i := 1; i < 255; i++ {
		ps.Peers[string(rune('a'+i%26))+string(rune('a'+i/26))] = &Peer{IP: netip.AddrFrom4([4]byte{240, 9, 9, byte(i)})}
	}
	if _, err := m.allocate(ps); !errors.Is(err, ErrSubnetFull) {
		t.Errorf("allocate in a full /24: %v", err)
	}
	delete(ps.Peers, "ba") // 240.9.9.1
	if a, err := m.allocate(ps); err != nil || a != netip.MustParseAddr("240.9.9.1") {
		t.Errorf("allocate = %v, %v", a, err)
	}
}

// Two processes' worth of concurrent admissions with a one-use token: the
// state lock lets exactly one through, and no address is given twice.
func TestConcurrentAdmissions(t *testing.T) {
	m, dir := newMaster(t)
	m2, err := Open(KeyPath(dir, "lab")) // a second handle, as another process would have
	if err != nil {
		t.Fatal(err)
	}
	m2.SetClock(func() time.Time { return sectest.Now })
	tok, _ := m.NewToken(TokenOptions{Uses: 1})
	reqs := [][]byte{request(t, tok, "p1", 41, sectest.Now), request(t, tok, "p2", 42, sectest.Now)}
	errs := make(chan error, 2)
	for i, mm := range []*Master{m, m2} {
		go func() { _, err := mm.Admit(reqs[i]); errs <- err }()
	}
	var ok, usedUp int
	for range 2 {
		switch err := <-errs; {
		case err == nil:
			ok++
		case errors.Is(err, token.ErrUsedUp):
			usedUp++
		default:
			t.Errorf("admit: %v", err)
		}
	}
	if ok != 1 || usedUp != 1 {
		t.Errorf("%d admitted, %d refused as used up; want 1 and 1", ok, usedUp)
	}
}
