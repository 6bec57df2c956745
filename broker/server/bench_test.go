package server_test

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/brokertest"
	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/broker/server"
)

// BenchmarkSignalRoundTrip: a signal from a to b and b's answer, through
// one broker; reports p50 and p99 of the round trip.
func BenchmarkSignalRoundTrip(b *testing.B) {
	l := brokertest.Start(b, brokertest.Options{})
	ctx := brokertest.Ctx(b, 5*time.Minute)
	atB, atA := make(chan client.Signal, 1), make(chan client.Signal, 1)
	var cb *client.Client
	ca := l.Client(l.Peer("a"), func(c *client.Config) { c.OnSignal = func(s client.Signal) { atA <- s } })
	cb = l.Client(l.Peer("b"), func(c *client.Config) { c.OnSignal = func(s client.Signal) { atB <- s } })
	for _, c := range []*client.Client{ca, cb} {
		c.WaitConnected(ctx, 1)
	}
	ca.View().Wait(ctx, func(v *client.View) bool { return v.Cert("b") != nil })
	cb.View().Wait(ctx, func(v *client.View) bool { return v.Cert("a") != nil })
	rtts := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		ca.Signal(ctx, "b", proto.SignalICE, []byte("candidate"))
		s := <-atB
		cb.Signal(ctx, "a", proto.SignalICE, s.Payload)
		<-atA
		rtts = append(rtts, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(rtts)
	b.ReportMetric(float64(rtts[len(rtts)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(rtts[len(rtts)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkRelayTCP: relayed bytes per second over TLS sessions through one
// broker, and, as a reference measured in the same run, a plain loopback
// TCP stream; reports the ratio.
func BenchmarkRelayTCP(b *testing.B) {
	l := brokertest.Start(b, brokertest.Options{Limits: server.Limits{RelayRate: 1 << 40}})
	ctx := brokertest.Ctx(b, 5*time.Minute)
	const size = 1400
	var mu sync.Mutex
	got := 0
	done := make(chan struct{}, 1)
	want := 0
	ca := l.Client(l.Peer("a"), nil)
	cb := l.Client(l.Peer("b"), func(c *client.Config) {
		c.OnRelay = func(_ string, d []byte) {
			mu.Lock()
			got += len(d)
			if got >= want {
				select {
				case done <- struct{}{}:
				default:
				}
			}
			mu.Unlock()
		}
	})
	ca.WaitConnected(ctx, 1)
	cb.WaitConnected(ctx, 1)
	cb.View().Wait(ctx, func(v *client.View) bool { return v.Cert("a") != nil })
	data := make([]byte, size)
	n := max(b.N, 1000)
	mu.Lock()
	want = n * size * 9 / 10 // relay may drop under load
	mu.Unlock()
	b.SetBytes(size)
	b.ResetTimer()
	start := time.Now()
	for range n {
		for ca.Relay("b", data) != nil {
			time.Sleep(time.Microsecond)
		}
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
	relay := time.Since(start)
	b.StopTimer()
	mu.Lock()
	rate := float64(got) / relay.Seconds()
	mu.Unlock()
	ref := plainTCP(b, n*size)
	b.ReportMetric(rate/1e6, "relay-MB/s")
	b.ReportMetric(ref/1e6, "tcp-MB/s")
	b.ReportMetric(rate/ref, "ratio")
}

func plainTCP(b *testing.B, total int) float64 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	res := make(chan float64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			res <- 0
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		n, start := 0, time.Now()
		for n < total {
			k, err := c.Read(buf)
			if err != nil {
				break
			}
			n += k
		}
		res <- float64(n) / time.Since(start).Seconds()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, 1400)
	for sent := 0; sent < total; sent += len(data) {
		c.Write(data)
	}
	return <-res
}

// BenchmarkJoinStorm: N peers connect at once to one in-process broker that
// already holds their certificates (a broker restarted with its state);
// time until every peer's view holds every other peer's certificate. The
// simulated peers share one verification cache (each certificate verified
// once in the process, not N² times); bench/broker has the 1,000-peer
// figures with the broker in its own process.
func BenchmarkJoinStorm(b *testing.B) {
	for _, n := range []int{50, 200} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for range b.N {
				joinStorm(b, n)
			}
		})
	}
}

func joinStorm(b *testing.B, n int) {
	b.StopTimer()
	l := brokertest.Start(b, brokertest.Options{Limits: server.Limits{ConnRate: 1e6}, ShareVerifyCache: true})
	ctx := brokertest.Ctx(b, 5*time.Minute)
	peers := make([]*brokertest.Peer, n)
	for i := range peers {
		peers[i] = l.Peer(fmt.Sprintf("p%d", i))
	}
	b.StartTimer()
	start := time.Now()
	cs := make([]*client.Client, n)
	for i, p := range peers {
		cs[i] = l.Client(p, nil)
	}
	for _, c := range cs {
		if err := c.View().Wait(ctx, func(v *client.View) bool { return v.Len() == n }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(time.Since(start).Seconds()*1000, "ms-all-see-all")
}
