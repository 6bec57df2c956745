package netlab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestShaping checks each kind of link shaping with real traffic against
// an unshaped site of the same lab: ping RTT with 10 ms of delay each way,
// iperf3 throughput with a 100 Mbit/s rate, datagram delivery with 20%
// loss each way.
func TestShaping(t *testing.T) {
	spec := Spec{Internet: []string{"srv1"}, Sites: []SiteSpec{
		{Name: "ref", Kind: Cone},
		{Name: "delay", Kind: Cone, Shape: Shape{Delay: 10 * time.Millisecond}},
		{Name: "rate", Kind: Cone, Shape: Shape{Rate: 100_000_000}},
		{Name: "loss", Kind: Public, Shape: Shape{Loss: 0.2}},
	}}
	RequireTools(t, "ping", "iperf3")
	l := New(t, spec)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := l.Internet("srv1")

	t.Run("delay", func(t *testing.T) {
		ref := minRTT(t, ctx, l.Site("ref").Hosts[0], srv.Addr)
		got := minRTT(t, ctx, l.Site("delay").Hosts[0], srv.Addr)
		t.Logf("ping RTT: unshaped %.2f ms, delay 10ms each way %.2f ms", ref, got)
		if got < 20 {
			t.Errorf("RTT %.2f ms with 10 ms each way: want >= 20 ms", got)
		}
		if got > 30 {
			t.Errorf("RTT %.2f ms with 10 ms each way: want about 20 ms, not more than 30", got)
		}
	})

	t.Run("rate", func(t *testing.T) {
		p, err := srv.Start("iperf3", "-s", "-B", srv.Addr.String(), "-p", "5201")
		if err != nil {
			t.Fatal(err)
		}
		defer p.Stop(time.Second)
		if err := waitTCP(ctx, srv, srv.Addr.String()+":5201", p, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		ref := iperf(t, ctx, l.Site("ref").Hosts[0], srv.Addr, false)
		up := iperf(t, ctx, l.Site("rate").Hosts[0], srv.Addr, false)
		down := iperf(t, ctx, l.Site("rate").Hosts[0], srv.Addr, true)
		t.Logf("iperf3: unshaped %.0f Mbit/s; rate 100mbit: upload %.1f, download %.1f Mbit/s", ref, up, down)
		for dir, got := range map[string]float64{"upload": up, "download": down} {
			if got > 105 || got < 60 {
				t.Errorf("%s through a 100 Mbit/s link: %.1f Mbit/s, want 60 to 105", dir, got)
			}
		}
		if ref < 2*up {
			t.Errorf("the unshaped reference (%.0f Mbit/s) is not clearly faster than the shaped link (%.0f)", ref, up)
		}
	})

	t.Run("loss", func(t *testing.T) {
		e, err := StartEcho(srv, srv.Addr, 7400)
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		ref := delivered(t, l.Site("ref").Hosts[0], e, 300)
		got := delivered(t, l.Site("loss").Hosts[0], e, 300)
		t.Logf("round trips answered of 300: unshaped %d, loss 20%% each way %d (expected about 192)", ref, got)
		if ref < 297 {
			t.Errorf("unshaped reference lost %d of 300", 300-ref)
		}
		// 0.8 * 0.8 = 64% of round trips survive; allow a wide band.
		if got < 150 || got > 235 {
			t.Errorf("with 20%% loss each way %d of 300 round trips came back, want 150 to 235", got)
		}
	})
}

var rttRE = regexp.MustCompile(`rtt min/avg/max/mdev = ([0-9.]+)/`)

func minRTT(t *testing.T, ctx context.Context, h *Host, dst netip.Addr) float64 {
	t.Helper()
	out, err := h.Run(ctx, "ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	m := rttRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no rtt in ping output:\n%s", out)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// iperf runs a 2-second iperf3 test from h to the server and returns the
// receiver's throughput in Mbit/s (reverse: server sends).
func iperf(t *testing.T, ctx context.Context, h *Host, srv netip.Addr, reverse bool) float64 {
	t.Helper()
	args := []string{"iperf3", "-c", srv.String(), "-p", "5201", "-t", "2", "-J"}
	if reverse {
		args = append(args, "-R")
	}
	out, err := h.Run(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("iperf3 JSON: %v\n%s", err, out)
	}
	return r.End.SumReceived.BitsPerSecond / 1e6
}

// delivered sends n datagrams one at a time from h to the echo and counts
// the answers.
func delivered(t *testing.T, h *Host, e *Echo, n int) int {
	t.Helper()
	c, err := UDPSocket(h, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst := netip.AddrPortFrom(e.Host.Addr, e.Port)
	buf := make([]byte, 128)
	got := 0
	for i := 0; i < n; i++ {
		msg := fmt.Sprintf("probe %d", i)
		if _, err := c.WriteToUDPAddrPort([]byte(msg), dst); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err == nil {
			got++
		}
	}
	return got
}
