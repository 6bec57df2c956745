package server_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
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

// TestRelayFairShare: relay rate limits are per peer, so peers that share a
// broker (and here a receiver) share it fairly: a peer that floods gets
// its own rate and no more, and cannot starve a light sender, which gets
// everything through; two flooding senders get equal shares.
func TestRelayFairShare(t *testing.T) {
	const rate = 256 << 10 // bytes per second per peer (burst: one second)
	l := brokertest.Start(t, brokertest.Options{Limits: server.Limits{RelayRate: rate}})
	ctx := brokertest.Ctx(t, 30*time.Second)
	var mu sync.Mutex
	got := map[string]int{}
	recv := l.Client(l.Peer("recv"), func(c *client.Config) {
		c.OnRelay = func(from string, d []byte) { mu.Lock(); got[from] += len(d); mu.Unlock() }
	})
	heavy, light := l.Client(l.Peer("heavy"), nil), l.Client(l.Peer("light"), nil)
	for _, c := range []*client.Client{recv, heavy, light} {
		if err := c.WaitConnected(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	recv.View().Wait(ctx, func(v *client.View) bool { return v.Cert("heavy") != nil && v.Cert("light") != nil })
	data := make([]byte, 1400)
	// flood sends as fast as the client's queue takes datagrams until end.
	flood := func(c *client.Client, end time.Time) {
		for time.Now().Before(end) {
			if c.Relay("recv", data) != nil {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
	// paced sends bytesPerSec until end; it returns what it sent.
	paced := func(c *client.Client, bytesPerSec float64, end time.Time) int {
		sent, start := 0, time.Now()
		for now := start; now.Before(end); now = time.Now() {
			if float64(sent) < bytesPerSec*now.Sub(start).Seconds() && c.Relay("recv", data) == nil {
				sent += len(data)
				continue
			}
			time.Sleep(time.Millisecond)
		}
		return sent
	}
	settle := func() map[string]int {
		time.Sleep(300 * time.Millisecond) // the last datagrams in flight
		mu.Lock()
		defer mu.Unlock()
		out := got
		got = map[string]int{}
		return out
	}
	const phase = time.Second
	// The most one peer can get through in a phase: the burst and the rate.
	most := float64(rate) + rate*phase.Seconds()

	// A flood beside a light sender at a third of the rate.
	end := time.Now().Add(phase)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); flood(heavy, end) }()
	sent := paced(light, rate/3, end)
	wg.Wait()
	g := settle()
	t.Logf("flood beside a light sender: heavy %d bytes, light %d of %d sent (at most %.0f each)", g["heavy"], g["light"], sent, most)
	if g["light"] < sent*95/100 {
		t.Errorf("the light sender got %d of %d bytes through beside a flood: starved", g["light"], sent)
	}
	// Slack above: datagrams still in the client's queue at the end of the
	// phase meet a bucket that went on filling while they waited.
	if float64(g["heavy"]) > most*1.3 || float64(g["heavy"]) < most*0.5 {
		t.Errorf("the flooding sender got %d bytes through in %v, want about its own limit %.0f", g["heavy"], phase, most)
	}

	// Two floods: equal shares (both buckets refilled during the pause).
	time.Sleep(time.Second)
	end = time.Now().Add(phase)
	wg.Add(2)
	go func() { defer wg.Done(); flood(heavy, end) }()
	go func() { defer wg.Done(); flood(light, end) }()
	wg.Wait()
	g = settle()
	total := g["heavy"] + g["light"]
	t.Logf("two floods: %d and %d bytes", g["heavy"], g["light"])
	if total == 0 {
		t.Fatal("nothing relayed")
	}
	for _, name := range []string{"heavy", "light"} {
		if share := float64(g[name]) / float64(total); share < 0.4 || share > 0.6 {
			t.Errorf("two flooding senders: %s has a share of %.2f, want 0.4-0.6 (%v)", name, share, g)
		}
	}
}
