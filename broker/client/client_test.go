package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/brokertest"
	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/endpoint"
	"github.com/pvc-project/pvc/security/enroll"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
)

func TestEnrollThroughBroker(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{Brokers: 2})
	ctx := brokertest.Ctx(t, 30*time.Second)
	// The master is connected to broker 1 only; enrollees go to broker 0
	// first, which forwards over the replica link.
	mc := l.MasterClient()
	_ = mc
	tok, err := l.Master.NewToken(master.TokenOptions{Uses: 2, Groups: []string{"workers"}})
	if err != nil {
		t.Fatal(err)
	}
	request := func(name string) []byte {
		key, _ := keys.NewSigning()
		wg, _ := keys.NewWG()
		r, err := enroll.New(tok, name, wg.Public(), key, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return r.Encode()
	}
	if err := mc.WaitConnected(ctx, 2); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"node-1", "node-2"} {
		c, err := client.Enroll(ctx, l.Bundle, request(name), nil)
		if err != nil {
			t.Fatalf("enroll %s: %v", name, err)
		}
		if c.Name != name || !c.InGroup("workers") || !l.Bundle.Subnet.Contains(c.IP) {
			t.Errorf("got certificate %+v", c)
		}
	}
	_, err = client.Enroll(ctx, l.Bundle, request("node-3"), nil)
	if !errors.Is(err, client.ErrEnrollRefused) || !strings.Contains(err.Error(), "used up") {
		t.Errorf("third use of a 2-use token: got %v, want ErrEnrollRefused (used up)", err)
	}
	// The certificates are in the registry: a peer can look them up.
	p := l.Client(l.Peer("watcher"), nil)
	if _, err := lookupEventually(ctx, p, "node-2"); err != nil {
		t.Errorf("enrolled peer not in the registry: %v", err)
	}
}

func lookupEventually(ctx context.Context, c *client.Client, name string) (*cert.Cert, error) {
	if err := c.WaitConnected(ctx, 1); err != nil {
		return nil, err
	}
	err := c.View().Wait(ctx, func(v *client.View) bool { return v.Cert(name) != nil })
	if err != nil {
		return nil, err
	}
	return c.Lookup(ctx, name)
}

func TestEnrollWithoutMaster(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{})
	ctx := brokertest.Ctx(t, 10*time.Second)
	tok, _ := l.Master.NewToken(master.TokenOptions{})
	key, _ := keys.NewSigning()
	wg, _ := keys.NewWG()
	r, _ := enroll.New(tok, "n", wg.Public(), key, time.Now())
	if _, err := client.Enroll(ctx, l.Bundle, r.Encode(), nil); !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "no master") {
		t.Errorf("got %v, want a refusal saying no master is reachable", err)
	}
}

func TestLookupAndSubscription(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{})
	ctx := brokertest.Ctx(t, 20*time.Second)
	a := l.Peer("a")
	ca := l.Client(a, nil)
	mc := l.MasterClient()
	if err := ca.WaitConnected(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := mc.WaitConnected(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// A new certificate published by the master reaches a's view by push.
	b := l.Peer("b")
	if err := mc.Publish(ctx, b.Cert.Encode()); err != nil {
		t.Fatal(err)
	}
	if err := ca.View().Wait(ctx, func(v *client.View) bool { return v.Cert("b") != nil }); err != nil {
		t.Fatalf("subscription did not bring b's certificate: %v", err)
	}
	got, err := ca.Lookup(ctx, "b")
	if err != nil || got.Serial != b.Cert.Serial {
		t.Fatalf("lookup b: %v, %v", got, err)
	}
	got, err = ca.LookupIP(ctx, b.Cert.IP)
	if err != nil || got.Name != "b" {
		t.Fatalf("lookup %v: %v, %v", b.Cert.IP, got, err)
	}
	// Asking the broker (not the view): a second client that did not
	// subscribe yet looks c up by name and by IP.
	c := l.Peer("c")
	if err := mc.Publish(ctx, c.Cert.Encode()); err != nil {
		t.Fatal(err)
	}
	if got, err := mc.LookupIP(ctx, c.Cert.IP); err != nil || got.Name != "c" {
		t.Errorf("master lookup of %v: %v, %v", c.Cert.IP, got, err)
	}
	if _, err := mc.Lookup(ctx, "nobody"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("lookup of an unknown name: %v", err)
	}
	if _, err := mc.LookupIP(ctx, netip.MustParseAddr("240.0.0.1")); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("lookup of an unknown IP: %v", err)
	}
	// Endpoints: b publishes its own; a sees them; b cannot publish c's.
	cb := l.Client(b, nil)
	if err := cb.WaitConnected(ctx, 1); err != nil {
		t.Fatal(err)
	}
	rec := &endpoint.Record{Cluster: "lab", Name: "b", Version: uint64(time.Now().UnixNano()),
		Endpoints: []endpoint.Endpoint{{Kind: endpoint.Host, Addr: netip.MustParseAddrPort("192.0.2.7:51820")}}}
	if err := rec.Sign(b.Key); err != nil {
		t.Fatal(err)
	}
	if err := cb.Publish(ctx, rec.Encode()); err != nil {
		t.Fatal(err)
	}
	if err := ca.View().Wait(ctx, func(v *client.View) bool { return v.Endpoints("b") != nil }); err != nil {
		t.Fatalf("endpoints of b not seen: %v", err)
	}
	forged := &endpoint.Record{Cluster: "lab", Name: "c", Version: 1, Endpoints: rec.Endpoints}
	forged.Sign(b.Key)
	if err := cb.Publish(ctx, forged.Encode()); !errors.Is(err, client.ErrRefused) {
		t.Errorf("b publishing c's endpoints: got %v, want refused", err)
	}
	// A revocation reaches the view by push and removes b.
	rl, _, err := l.Master.Revoke("b")
	if err != nil {
		t.Fatal(err)
	}
	if err := mc.Publish(ctx, rl.Encode()); err != nil {
		t.Fatal(err)
	}
	if err := ca.View().Wait(ctx, func(v *client.View) bool { return v.Cert("b") == nil && v.Revocation() != nil }); err != nil {
		t.Fatalf("revocation not seen: %v", err)
	}
	if !ca.View().Revocation().Revoked(b.Cert.Serial) {
		t.Error("b's serial is not in the revocation list of the view")
	}
}

// signalLab: a on broker 0 only, b on broker 1 only, replicas linked.
func TestSignalAcrossReplicas(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{Brokers: 2})
	ctx := brokertest.Ctx(t, 20*time.Second)
	a, b := l.Peer("a"), l.Peer("b")
	got := make(chan client.Signal, 16)
	ca := l.Client(a, func(c *client.Config) { c.Brokers = l.Bundle.Brokers[:1] })
	cb := l.Client(b, func(c *client.Config) {
		c.Brokers = l.Bundle.Brokers[1:]
		c.OnSignal = func(s client.Signal) { got <- s }
	})
	waitBoth(ctx, t, ca, cb, 1, "a", "b")
	if err := ca.Signal(ctx, "b", proto.SignalICE, []byte("ufrag:pwd")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s.From != "a" || s.Kind != proto.SignalICE || string(s.Payload) != "ufrag:pwd" {
			t.Errorf("got %+v", s)
		}
	case <-ctx.Done():
		t.Fatal("signal not delivered across replicas")
	}
}

func waitBoth(ctx context.Context, t *testing.T, ca, cb *client.Client, n int, na, nb string) {
	t.Helper()
	for _, c := range []*client.Client{ca, cb} {
		if err := c.WaitConnected(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := ca.View().Wait(ctx, func(v *client.View) bool { return v.Cert(nb) != nil }); err != nil {
		t.Fatal(err)
	}
	if err := cb.View().Wait(ctx, func(v *client.View) bool { return v.Cert(na) != nil }); err != nil {
		t.Fatal(err)
	}
}

func TestSignalExactlyOnceAndForged(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{Brokers: 2})
	ctx := brokertest.Ctx(t, 20*time.Second)
	a, b, m := l.Peer("a"), l.Peer("b"), l.Peer("mallory")
	var mu sync.Mutex
	var got []client.Signal
	ca := l.Client(a, nil)
	cb := l.Client(b, func(c *client.Config) {
		c.OnSignal = func(s client.Signal) { mu.Lock(); got = append(got, s); mu.Unlock() }
	})
	cm := l.Client(m, nil)
	waitBoth(ctx, t, ca, cb, 2, "a", "b")
	if err := cm.WaitConnected(ctx, 2); err != nil {
		t.Fatal(err)
	}
	cb.View().Wait(ctx, func(v *client.View) bool { return v.Cert("mallory") != nil })
	for i := range 5 {
		if err := ca.Signal(ctx, "b", proto.SignalOffer, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// Forgeries: mallory signs as a (from != session: the broker drops it),
	// and mallory's own signal with a's name but her signature, injected
	// raw through a session of her own (the receiver drops it).
	forge := &proto.Signal{Cluster: "lab", From: "a", To: "b", ID: [16]byte{9}, Kind: proto.SignalOffer, Payload: []byte("evil")}
	proto.SignSignal(forge, m.Key)
	sendRaw(ctx, t, l, m, forge)
	bad := &proto.Signal{Cluster: "lab", From: "mallory", To: "b", ID: [16]byte{10}, Kind: proto.SignalOffer, Payload: []byte("evil")}
	proto.SignSignal(bad, a.Key) // not mallory's key
	sendRaw(ctx, t, l, m, bad)
	// A marker sent last: once it arrives everything before it has.
	if err := ca.Signal(ctx, "b", proto.SignalOffer, []byte("end")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		done := n > 0 && string(got[n-1].Payload) == "end"
		mu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let duplicates (if any) arrive
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 6 {
		t.Fatalf("got %d signals, want 6 (5 and the marker, each once): %+v", len(got), got)
	}
	for _, s := range got {
		if bytes.Equal(s.Payload, []byte("evil")) {
			t.Errorf("forged signal delivered: %+v", s)
		}
	}
}

// sendRaw opens a session of peer p with broker 0 and sends m on it.
func sendRaw(ctx context.Context, t *testing.T, l *brokertest.Lab, p *brokertest.Peer, m proto.Message) {
	t.Helper()
	c, err := client.New(client.Config{Bundle: l.Bundle, Cert: p.Cert.Encode(), Key: p.Key})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.SendRaw(ctx, c, l.Bundle.Brokers[0], m); err != nil {
		t.Fatal(err)
	}
}

func TestRelay(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{Brokers: 2})
	ctx := brokertest.Ctx(t, 20*time.Second)
	a, b := l.Peer("a"), l.Peer("b")
	got := make(chan string, 100)
	ca := l.Client(a, func(c *client.Config) { c.Brokers = l.Bundle.Brokers[:1] })
	cb := l.Client(b, func(c *client.Config) {
		c.Brokers = l.Bundle.Brokers[1:]
		c.OnRelay = func(from string, d []byte) { got <- from + ":" + string(d) }
	})
	waitBoth(ctx, t, ca, cb, 1, "a", "b")
	// A relayed datagram is best effort, like UDP: one sent before the
	// replica link is up (the views hold both certificates before that:
	// the lab publishes them to every replica) is dropped. Send until one
	// arrives.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for delivered := false; !delivered; {
		if err := ca.Relay("b", []byte("wg-datagram")); err != nil {
			t.Fatal(err)
		}
		select {
		case s := <-got:
			if s != "a:wg-datagram" {
				t.Errorf("got %q", s)
			}
			delivered = true
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("relayed datagram not delivered\nbroker 0:\n%s\nbroker 1:\n%s", l.Brokers[0].Log, l.Brokers[1].Log)
		}
	}
	// Revoke a: its relay is refused (its session is closed, and a
	// datagram sent on a raw session never arrives).
	rl, _, _ := l.Master.Revoke("a")
	mc := l.MasterClient()
	mc.WaitConnected(ctx, 2)
	if err := mc.Publish(ctx, rl.Encode()); err != nil {
		t.Fatal(err)
	}
	cb.View().Wait(ctx, func(v *client.View) bool { return v.Cert("a") == nil })
	ca.Relay("b", []byte("after revocation"))
	err := func() error {
		c, _ := client.New(client.Config{Bundle: l.Bundle, Cert: a.Cert.Encode(), Key: a.Key})
		return client.SendRaw(ctx, c, l.Bundle.Brokers[0], &proto.Relay{Cluster: "lab", From: "a", To: "b", Data: []byte("raw")})
	}()
	if !errors.Is(err, client.ErrRefused) {
		t.Errorf("revoked peer's session: got %v, want refused", err)
	}
	for quiet := time.After(300 * time.Millisecond); ; {
		select {
		case s := <-got:
			if s != "a:wg-datagram" { // not a late duplicate of the first
				t.Errorf("revoked peer's datagram delivered: %q", s)
			}
			continue
		case <-quiet:
		}
		break
	}
	if !l.Brokers[0].Log.WaitFor("refused peer a from", 2*time.Second) {
		t.Errorf("broker log lacks the refusal of revoked a")
	}
}

// TestMaliciousBroker: a broker that rewrites a certificate (another
// signing key, re-signed by a key that is not the master's) and injects a
// forged one cannot make the client accept a wrong key.
func TestMaliciousBroker(t *testing.T) {
	evil, _ := keys.NewSigning()
	var l *brokertest.Lab
	var victim *brokertest.Peer
	forge := func(name string, ip netip.Addr) []byte {
		k, _ := keys.NewSigning()
		wg, _ := keys.NewWG()
		c := &cert.Cert{Cluster: "lab", Name: name, IP: ip, SignKey: k.Public().(ed25519.PublicKey), WGKey: wg.Public(),
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), Serial: 1 << 40}
		if err := c.Sign(evil); err != nil {
			panic(err)
		}
		return c.Encode()
	}
	tamper := func(raw []byte) []byte {
		if victim != nil && bytes.Equal(raw, victim.Cert.Encode()) {
			b := bytes.Clone(raw)
			b[len(b)-70] ^= 1 // a bit of the body (the groups/validity): the signature no longer holds
			return b
		}
		return raw
	}
	hook := func(m proto.Message) proto.Message {
		switch m := m.(type) {
		case *proto.Objects:
			out := &proto.Objects{}
			for _, o := range m.Objects {
				out.Objects = append(out.Objects, tamper(o))
			}
			out.Objects = append(out.Objects, forge("ghost", l.Bundle.Subnet.Addr().Next().Next().Next().Next()))
			return out
		case *proto.Object:
			return &proto.Object{Req: m.Req, Object: forge("victim", victim.Cert.IP)}
		}
		return m
	}
	l = brokertest.Start(t, brokertest.Options{Hook: func(int) func(proto.Message) proto.Message { return hook }})
	ctx := brokertest.Ctx(t, 20*time.Second)
	victim = l.Peer("victim")
	mc := l.MasterClient()
	mc.WaitConnected(ctx, 1)
	if err := mc.Publish(ctx, victim.Cert.Encode()); err != nil {
		t.Fatal(err)
	}
	a := l.Client(l.Peer("a"), nil)
	if err := a.WaitConnected(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := a.View().Wait(ctx, func(v *client.View) bool { return v.Rejected() >= 2 }); err != nil {
		t.Fatalf("the view rejected %d objects, want the tampered and the forged one", a.View().Rejected())
	}
	if c := a.View().Cert("ghost"); c != nil {
		t.Errorf("forged certificate accepted: %+v", c)
	}
	if c := a.View().Cert("victim"); c != nil {
		t.Errorf("tampered certificate accepted: %+v", c)
	}
	c, err := a.Lookup(ctx, "victim")
	if err == nil {
		t.Errorf("lookup accepted the broker's forged answer: key %x", c.SignKey)
	} else if !errors.Is(err, client.ErrUnverified) {
		t.Errorf("lookup: got %v, want ErrUnverified", err)
	}
}

// TestRelayUDP: a peer at a site that lets UDP through relays over UDP; a
// peer at a UDP-blocked site (no UDP path) over its TLS session; the broker
// bridges the two in both directions.
func TestRelayUDP(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{})
	ctx := brokertest.Ctx(t, 20*time.Second)
	a, b := l.Peer("cone"), l.Peer("blocked")
	gotA, gotB := make(chan string, 10), make(chan string, 10)
	ca := l.Client(a, func(c *client.Config) {
		c.UDP = true
		c.OnRelay = func(from string, d []byte) { gotA <- from + ":" + string(d) }
	})
	cb := l.Client(b, func(c *client.Config) {
		c.OnRelay = func(from string, d []byte) { gotB <- from + ":" + string(d) }
	})
	waitBoth(ctx, t, ca, cb, 1, "cone", "blocked")
	// Wait for the UDP path to be confirmed: a relay then goes over UDP.
	for end := time.Now().Add(5 * time.Second); !ca.RelayOverUDP(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("UDP relay path never confirmed")
		}
	}
	expect := func(ch chan string, want string) {
		t.Helper()
		select {
		case s := <-ch:
			if s != want {
				t.Errorf("got %q, want %q", s, want)
			}
		case <-ctx.Done():
			t.Fatalf("%q not delivered", want)
		}
	}
	if err := ca.Relay("blocked", []byte("over udp")); err != nil {
		t.Fatal(err)
	}
	expect(gotB, "cone:over udp")
	if err := cb.Relay("cone", []byte("over tls")); err != nil {
		t.Fatal(err)
	}
	expect(gotA, "blocked:over tls")
}

// TestBundleUpdateAddsBroker: a client that knows one replica learns a
// second one from a master-signed bundle update and opens a session with it.
func TestBundleUpdateAddsBroker(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{Brokers: 2})
	ctx := brokertest.Ctx(t, 20*time.Second)
	resign := func(v uint64, brokers ...int) *bundle.Bundle {
		b := *l.Bundle
		b.Version, b.Brokers = v, nil
		for _, i := range brokers {
			b.Brokers = append(b.Brokers, l.Bundle.Brokers[i])
		}
		if err := b.Sign(l.MasterKey); err != nil {
			t.Fatal(err)
		}
		return &b
	}
	only0 := resign(l.Bundle.Version+1, 0)
	both := resign(l.Bundle.Version+2, 0, 1)
	if _, err := l.Brokers[0].Server.Publish(only0.Encode()); err != nil {
		t.Fatal(err)
	}
	p := l.Peer("p")
	c := l.Client(p, func(c *client.Config) { c.Bundle = only0 })
	if err := c.WaitConnected(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if got := c.Connected(); len(got) != 1 || got[0] != l.Brokers[0].Addr {
		t.Fatalf("connected to %v, want only broker 0", got)
	}
	if _, err := l.Brokers[0].Server.Publish(both.Encode()); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConnected(ctx, 2); err != nil {
		t.Fatalf("the client did not follow the bundle update: %v (connected %v)", err, c.Connected())
	}
	if v := c.View().Bundle().Version; v != both.Version {
		t.Errorf("view bundle version %d, want %d", v, both.Version)
	}
}
