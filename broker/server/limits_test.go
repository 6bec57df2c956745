package server_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/pvc-project/pvc/broker/brokertest"
	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/broker/server"
)

func serverLimitsFast() server.Limits {
	return server.Limits{ReplicaRetry: 50 * time.Millisecond}
}

func TestSTUN(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{})
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	dst, _ := net.ResolveUDPAddr("udp", l.Brokers[0].UDPAddr)
	if _, err := conn.WriteTo(req.Raw, dst); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	resp := &stun.Message{Raw: buf[:n]}
	if err := resp.Decode(); err != nil {
		t.Fatal(err)
	}
	if resp.Type != stun.BindingSuccess || resp.TransactionID != req.TransactionID {
		t.Fatalf("got %v, want a binding success for our transaction", resp)
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(resp); err != nil {
		t.Fatal(err)
	}
	local := conn.LocalAddr().(*net.UDPAddr)
	if !xor.IP.Equal(local.IP) || xor.Port != local.Port {
		t.Errorf("XOR-MAPPED-ADDRESS %v:%d, want %v", xor.IP, xor.Port, local)
	}
	if err := stun.Fingerprint.Check(resp); err != nil {
		t.Errorf("fingerprint: %v", err)
	}
}

func TestMaxSessionsAndMetrics(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{Limits: server.Limits{MaxSessions: 2}})
	ctx := brokertest.Ctx(t, 20*time.Second)
	a, b := l.Client(l.Peer("a"), nil), l.Client(l.Peer("b"), nil)
	for _, c := range []*client.Client{a, b} {
		if err := c.WaitConnected(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	third := l.Peer("c")
	c, _ := client.New(client.Config{Bundle: l.Bundle, Cert: third.Cert.Encode(), Key: third.Key})
	err := c.Probe(ctx, l.Bundle.Brokers[0])
	if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "too many sessions") {
		t.Errorf("third session: got %v, want refused: too many sessions", err)
	}
	if !l.Brokers[0].Log.WaitFor("refused peer from 127.0.0.1:", 2*time.Second) {
		t.Errorf("broker log lacks the refusal:\n%s", l.Brokers[0].Log)
	}
	a.View().Wait(ctx, func(v *client.View) bool { return v.Cert("b") != nil })
	if err := a.Signal(ctx, "b", proto.SignalICE, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := a.Relay("b", []byte("datagram")); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`pvc_broker_sessions{role="peer"} 2`,
		`pvc_broker_refused_sessions_total{reason="limit"} 1`,
		`pvc_broker_registry_objects{kind="cert"} 3`,
		`pvc_broker_registry_objects{kind="bundle"} 1`,
		`pvc_broker_signals_total 1`,
		`pvc_broker_relay_bytes_total 8`,
		`pvc_broker_relay_drops_total{reason="drop"} 0`,
		"# TYPE pvc_broker_sessions gauge",
	}
	var body string
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get("http://" + l.Brokers[0].MetricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		bb, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if body = string(bb); !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
			t.Fatalf("content type %q", resp.Header.Get("Content-Type"))
		}
		missing := false
		for _, w := range want {
			missing = missing || !strings.Contains(body, w)
		}
		if !missing {
			return
		}
	}
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("metrics lack %q", w)
		}
	}
	t.Logf("metrics:\n%s", body)
}

// TestSlowPeer: a peer that stops reading does not stall the broker: its
// bounded queue drops the relay traffic sent to it, and other peers'
// signals still go through at once.
func TestSlowPeer(t *testing.T) {
	l := brokertest.Start(t, brokertest.Options{Limits: server.Limits{QueueFrames: 16, QueueBytes: 256 << 10, RelayRate: 1 << 30}})
	ctx := brokertest.Ctx(t, 30*time.Second)
	release := make(chan struct{})
	var stuck atomic.Bool
	slow := l.Client(l.Peer("slow"), func(c *client.Config) {
		c.OnRelay = func(string, []byte) {
			if stuck.CompareAndSwap(false, true) {
				<-release // the reader stops here
			}
		}
	})
	defer close(release)
	got := make(chan client.Signal, 4)
	fast := l.Client(l.Peer("fast"), func(c *client.Config) { c.OnSignal = func(s client.Signal) { got <- s } })
	sender := l.Client(l.Peer("sender"), nil)
	for _, c := range []*client.Client{slow, fast, sender} {
		if err := c.WaitConnected(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	sender.View().Wait(ctx, func(v *client.View) bool { return v.Cert("fast") != nil && v.Cert("slow") != nil })
	slow.View().Wait(ctx, func(v *client.View) bool { return v.Cert("sender") != nil })
	fast.View().Wait(ctx, func(v *client.View) bool { return v.Cert("sender") != nil })
	data := make([]byte, 60<<10)
	for range 400 { // 24 MB: more than the socket buffers and the queue
		sender.Relay("slow", data)
	}
	start := time.Now()
	if err := sender.Signal(ctx, "fast", proto.SignalICE, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("a slow peer stalled the signal to another peer")
	}
	t.Logf("signal through a broker with a stuck peer: %v", time.Since(start))
	if !stuck.Load() {
		t.Error("the slow peer never received anything")
	}
	resp, err := http.Get("http://" + l.Brokers[0].MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), `pvc_broker_relay_drops_total{reason="drop"} 0`) {
		t.Errorf("no relay drops counted:\n%s", body)
	}
}
