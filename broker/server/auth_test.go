package server_test

import (
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/brokertest"
	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/broker/server"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/enroll"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
)

// forgedCert signs a certificate for name with key, for the cluster given.
func forgedCert(t *testing.T, l *brokertest.Lab, p *brokertest.Peer, cluster string, signer ed25519.PrivateKey, notBefore, notAfter time.Time) []byte {
	t.Helper()
	c := &cert.Cert{Cluster: cluster, Name: p.Name, IP: l.Bundle.Subnet.Addr().Next().Next().Next(),
		WGKey: p.WG.Public(), SignKey: p.Key.Public().(ed25519.PublicKey), Serial: 9999,
		NotBefore: notBefore, NotAfter: notAfter}
	if err := c.Sign(signer); err != nil {
		t.Fatal(err)
	}
	return c.Encode()
}

func TestAuth(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{})
	b := l.Brokers[0]
	ctx := brokertest.Ctx(t, 20*time.Second)
	probe := func(p *brokertest.Peer, certBytes []byte, brokers []bundle.Broker) error {
		c, err := client.New(client.Config{Bundle: l.Bundle, Cert: certBytes, Key: p.Key})
		if err != nil {
			t.Fatal(err)
		}
		if brokers == nil {
			brokers = l.Bundle.Brokers
		}
		return c.Probe(ctx, brokers[0])
	}

	good := l.Peer("good")
	if err := probe(good, good.Cert.Encode(), nil); err != nil {
		t.Fatalf("good peer refused: %v", err)
	}

	other, err := master.Init(t.TempDir(), "lab", master.InitOptions{Brokers: l.Bundle.Brokers})
	if err != nil {
		t.Fatal(err)
	}
	alien := l.Peer("alien")
	alienCert, err := other.Issue(master.CertOptions{Name: "alien", WGKey: alien.WG.Public(), SignKey: alien.Key.Public().(ed25519.PublicKey)})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	stranger := l.Peer("stranger")
	old := l.Peer("old")
	revoked := l.Peer("revoked")
	rl, _, err := l.Master.Revoke("revoked")
	if err != nil {
		t.Fatal(err)
	}
	mc := l.MasterClient()
	if err := mc.WaitConnected(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := mc.Publish(ctx, rl.Encode()); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, who string
		p         *brokertest.Peer
		cert      []byte
		client    string // in the client's error
		log       string // in the broker's log
	}{
		{"other master", "alien", alien, alienCert.Encode(), "signed by another master", "refused peer alien from 127.0.0.1:"},
		{"other cluster", "stranger", stranger, forgedCert(t, l, stranger, "other", l.MasterKey, now.Add(-time.Hour), now.Add(time.Hour)), "certificate of another cluster", "refused peer stranger from 127.0.0.1:"},
		{"expired", "old", old, forgedCert(t, l, old, "lab", l.MasterKey, now.Add(-48*time.Hour), now.Add(-time.Hour)), "certificate expired", "refused peer old from 127.0.0.1:"},
		{"revoked", "revoked", revoked, revoked.Cert.Encode(), "certificate revoked", "refused peer revoked from 127.0.0.1:"},
	} {
		err := probe(tc.p, tc.cert, nil)
		if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), tc.client) {
			t.Errorf("%s: client error %v; want ErrRefused saying %q", tc.name, err, tc.client)
		}
		if !b.Log.WaitFor(tc.log, 2*time.Second) {
			t.Errorf("%s: broker log lacks %q:\n%s", tc.name, tc.log, b.Log)
		}
		if !strings.Contains(b.Log.String(), tc.client) {
			t.Errorf("%s: broker log lacks the reason %q", tc.name, tc.client)
		}
	}

	wrongKey, _ := keys.NewSigning()
	err = probe(good, good.Cert.Encode(), []bundle.Broker{{Addr: b.Addr, Key: wrongKey.Public().(ed25519.PublicKey)}})
	if !errors.Is(err, proto.ErrWrongBrokerKey) {
		t.Errorf("wrong pinned key: got %v, want ErrWrongBrokerKey", err)
	}
	if !b.Log.WaitFor("tls handshake failed from 127.0.0.1:", 2*time.Second) {
		t.Errorf("broker log lacks the failed handshake:\n%s", b.Log)
	}
}

// TestLifecycle starts and stops brokers with sessions of every kind and
// checks that no goroutine outlives them.
func TestLifecycle(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() { brokertest.CheckGoroutines(t, before) }) // runs last
	l := brokertest.Start(t, brokertest.Options{Brokers: 2})
	ctx := brokertest.Ctx(t, 20*time.Second)
	a := l.Client(l.Peer("a"), func(c *client.Config) { c.UDP = true })
	mc := l.MasterClient()
	if err := a.WaitConnected(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := mc.WaitConnected(ctx, 2); err != nil {
		t.Fatal(err)
	}
	for addr, o := range a.Observed() {
		if o.Addr() != netip.MustParseAddr("127.0.0.1") || o.Port() == 0 {
			t.Errorf("broker %s observed %v, want 127.0.0.1:PORT", addr, o)
		}
	}
	l.StopBroker(0)
	l.StartBroker(0)
	if err := a.WaitConnected(ctx, 2); err != nil {
		t.Fatal(err)
	}
}

// TestShutdownDuringHandshake: a connection that never speaks does not hold
// the broker's shutdown until the handshake timeout.
func TestShutdownDuringHandshake(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{})
	// A TLS client that completes the handshake, then never says Hello.
	c, err := tls.Dial("tcp", l.Brokers[0].Addr, proto.ClientTLS(l.Brokers[0].Key))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	l.StopBroker(0)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %v with a silent connection open", d)
	}
}

func TestEnrollRateLimit(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{Limits: server.Limits{EnrollRate: 0.001}})
	ctx := brokertest.Ctx(t, 20*time.Second)
	tok, _ := l.Master.NewToken(master.TokenOptions{})
	key, _ := keys.NewSigning()
	wg, _ := keys.NewWG()
	r, _ := enroll.New(tok, "n", wg.Public(), key, time.Now())
	var err error
	for range 11 { // the burst is 10
		_, err = client.Enroll(ctx, l.Bundle, r.Encode(), nil)
	}
	if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "enrollment rate limit") {
		t.Errorf("11th enrollment from one address: got %v, want the rate limit", err)
	}
	if !l.Brokers[0].Log.WaitFor("refused enrollee from 127.0.0.1:", 2*time.Second) {
		t.Error("broker log lacks the refusal")
	}
}
