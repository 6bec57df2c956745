package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/brokertest"
	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/signed"
)

// waitHeld waits until replica i holds at least version v of an object.
func waitHeld(t *testing.T, l *brokertest.Lab, i int, kind signed.Kind, subject string, v uint64) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if got, _ := l.Brokers[i].Server.Held(l.Cluster, kind, subject); got >= v {
			return
		}
		if time.Now().After(end) {
			got, _ := l.Brokers[i].Server.Held(l.Cluster, kind, subject)
			t.Fatalf("replica %d holds %s %q version %d, want %d", i, kind, subject, got, v)
		}
	}
}

// expectSignal sends a signal from a to b and waits for it.
func expectSignal(ctx context.Context, t *testing.T, a *client.Client, got chan client.Signal, payload string) {
	t.Helper()
	if err := a.Signal(ctx, "q", proto.SignalOffer, []byte(payload)); err != nil {
		t.Fatalf("signal %q: %v", payload, err)
	}
	for {
		select {
		case s := <-got:
			if string(s.Payload) == payload {
				return
			}
		case <-ctx.Done():
			t.Fatalf("signal %q not delivered", payload)
		}
	}
}

func TestReplication(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{Brokers: 3, Limits: serverLimitsFast()})
	ctx := brokertest.Ctx(t, 60*time.Second)
	mc := l.MasterClient()
	p := l.Client(l.Peer("p"), nil)
	got := make(chan client.Signal, 64)
	q := l.Client(l.Peer("q"), func(c *client.Config) { c.OnSignal = func(s client.Signal) { got <- s } })
	x, y := l.Peer("x"), l.Peer("y")
	for _, c := range []*client.Client{mc, p, q} {
		if err := c.WaitConnected(ctx, 3); err != nil {
			t.Fatal(err)
		}
	}
	p.View().Wait(ctx, func(v *client.View) bool { return v.Cert("q") != nil })
	expectSignal(ctx, t, p, got, "before")

	// A revocation published to one replica reaches the other two.
	rl1, _, err := l.Master.Revoke("x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Brokers[0].Server.Publish(rl1.Encode()); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		waitHeld(t, l, i, signed.KindRevocation, l.Cluster, rl1.Version)
	}

	// Replica 2 goes down; more is published meanwhile; the peers keep
	// talking through the others.
	l.StopBroker(2)
	rl2, _, err := l.Master.Revoke("y")
	if err != nil {
		t.Fatal(err)
	}
	z := l.Peer("z") // published to the running replicas
	if _, err := l.Brokers[1].Server.Publish(rl2.Encode()); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, l, 0, signed.KindRevocation, l.Cluster, rl2.Version)
	expectSignal(ctx, t, p, got, "during")
	_, _ = x, y

	// Restarted with its state dir, it has what it held and catches up on
	// the rest by anti-entropy.
	l.StartBroker(2)
	if v, _ := l.Brokers[2].Server.Held(l.Cluster, signed.KindRevocation, l.Cluster); v < rl1.Version {
		t.Errorf("restarted replica lost revocation %d from its state (holds %d)", rl1.Version, v)
	}
	waitHeld(t, l, 2, signed.KindRevocation, l.Cluster, rl2.Version)
	waitHeld(t, l, 2, signed.KindCert, "z", z.Cert.Serial)
	if _, ok := l.Brokers[2].Server.Held(l.Cluster, signed.KindCert, "y"); ok {
		t.Error("restarted replica still holds the revoked certificate of y")
	}
	if err := p.WaitConnected(ctx, 3); err != nil {
		t.Fatal(err)
	}
	expectSignal(ctx, t, p, got, "after")
	if !p.View().Revocation().Revoked(y.Cert.Serial) {
		t.Error("peer's view lacks the revocation of y")
	}
}
