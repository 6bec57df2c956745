package filter

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/security/policy"
)

const (
	syn    = tcpSYN
	synack = tcpSYN | tcpACK
	ack    = tcpACK
)

func TestAllowedPortReachableDeniedPortDropped(t *testing.T) {
	h := newHarness(t, "default deny\nallow from any to group:head proto tcp port 80\n", "", nil)

	s80 := tcpPkt(w1IP, 40000, selfIP, 80, syn, 0)
	passes(t, "SYN to allowed port 80", h.in(s80), s80)
	sa := tcpPkt(selfIP, 80, w1IP, 40000, synack, 0)
	passes(t, "SYN-ACK back", h.out(sa), sa)
	a := tcpPkt(w1IP, 40000, selfIP, 80, ack, 100)
	passes(t, "data", h.in(a), a)

	// A batch mixing refused and allowed packets keeps the allowed ones, in order.
	s22 := tcpPkt(w1IP, 40001, selfIP, 22, syn, 0)
	s80b := tcpPkt(w1IP, 40002, selfIP, 80, syn, 0)
	passes(t, "batch", h.in(s22, a, s22, s80b), a, s80b)
	passes(t, "all refused", h.in(s22))

	// Nothing allows this host to open port 80 on a worker.
	passes(t, "outbound to 80", h.out(tcpPkt(selfIP, 50000, w1IP, 80, syn, 0)))

	st := h.f.Stats()
	if got := rule(st, true, policy.LayerGlobal, 0); got.Flows != 2 || got.Packets != 5 {
		t.Errorf("allow rule 0: flows %d packets %d; want 2, 5", got.Flows, got.Packets)
	}
	if got := rule(st, false, policy.LayerGlobal, -1); got.Flows != 4 || got.Packets != 4 {
		t.Errorf("default deny: flows %d packets %d; want 4, 4", got.Flows, got.Packets)
	}
	if st.Flows != 2 {
		t.Errorf("flows in table = %d, want 2", st.Flows)
	}
}

func TestRepliesToOutboundFlowsPass(t *testing.T) {
	h := newHarness(t, `default deny
allow from group:head to any proto udp port 53
allow from group:head to any proto tcp port 443
allow from group:head to any proto icmp
`, "", nil)

	q := udpPkt(selfIP, 5000, w1IP, 53, 30)
	passes(t, "udp query", h.out(q), q)
	r := udpPkt(w1IP, 53, selfIP, 5000, 60)
	passes(t, "udp answer", h.in(r), r)
	passes(t, "udp to another local port", h.in(udpPkt(w1IP, 53, selfIP, 5001, 60)))

	s := tcpPkt(selfIP, 50000, xIP, 443, syn, 0)
	passes(t, "tcp SYN out", h.out(s), s)
	sa := tcpPkt(xIP, 443, selfIP, 50000, synack, 0)
	passes(t, "tcp SYN-ACK in", h.in(sa), sa)
	passes(t, "SYN-ACK of no flow", h.in(tcpPkt(xIP, 443, selfIP, 50001, synack, 0)))
	if got := h.f.Stats().NoFlow; got != 1 {
		t.Errorf("NoFlow = %d, want 1", got)
	}

	ping := icmpEcho(selfIP, w1IP, 8, 7)
	passes(t, "ping out", h.out(ping), ping)
	pong := icmpEcho(w1IP, selfIP, 0, 7)
	passes(t, "pong in", h.in(pong), pong)
	passes(t, "ping in", h.in(icmpEcho(w1IP, selfIP, 8, 9)))

	// ICMP errors about a flow in the table pass; about none, they are
	// new (inbound ICMP) flows, refused here.
	unr := icmpError(w1IP, selfIP, 3, 3, q)
	passes(t, "unreachable for the query", h.in(unr), unr)
	passes(t, "unreachable for nothing", h.in(icmpError(w1IP, selfIP, 3, 3, udpPkt(selfIP, 6000, w1IP, 53, 10))))
	passes(t, "unreachable about another peer's flow", h.in(icmpError(xIP, selfIP, 3, 3, q)))

	// Read drops refused packets from the middle of a batch and moves the
	// others' bytes forward.
	d1 := tcpPkt(selfIP, 50010, w1IP, 22, syn, 0)
	d2 := udpPkt(selfIP, 5002, w1IP, 54, 10)
	q2 := udpPkt(selfIP, 5003, w1IP, 53, 10)
	passes(t, "read batch", h.out(d1, q, d2, q2, d1), q, q2)
}

func TestOutsideInboundDenied(t *testing.T) {
	h := newHarness(t, "default allow\n", "domain 192.0.2.0/24\noutside inbound deny\n", nil)

	passes(t, "outside peer opens", h.in(tcpPkt(xIP, 40000, selfIP, 22, syn, 0)))
	if got := rule(h.f.Stats(), false, policy.LayerLocal, policy.LocalOutside); got.Packets != 1 {
		t.Errorf("local outside rule: %d packets, want 1", got.Packets)
	}
	passes(t, "relayed peer (underlay unknown) opens", h.in(tcpPkt(w2IP, 40000, selfIP, 22, syn, 0)))

	s := tcpPkt(selfIP, 50000, xIP, 22, syn, 0)
	passes(t, "this host opens to the outside peer", h.out(s), s)
	sa := tcpPkt(xIP, 22, selfIP, 50000, synack, 0)
	d := tcpPkt(xIP, 22, selfIP, 50000, ack, 500)
	passes(t, "its answers", h.in(sa, d), sa, d)

	in := tcpPkt(w1IP, 40000, selfIP, 22, syn, 0)
	passes(t, "peer inside the domain opens", h.in(in), in)
}

func TestInboundToClosedPort(t *testing.T) {
	h := newHarness(t, "default allow\n", "inbound tcp 22\n", nil)
	passes(t, "closed port 80", h.in(tcpPkt(w1IP, 40000, selfIP, 80, syn, 0)))
	if got := rule(h.f.Stats(), false, policy.LayerLocal, policy.LocalInbound); got.Packets != 1 {
		t.Errorf("local inbound rule: %d packets, want 1", got.Packets)
	}
	s22 := tcpPkt(w1IP, 40000, selfIP, 22, syn, 0)
	passes(t, "open port 22", h.in(s22), s22)
	o := tcpPkt(selfIP, 50000, w1IP, 80, syn, 0)
	passes(t, "outbound to the same host's port 80", h.out(o), o)
	r := tcpPkt(w1IP, 80, selfIP, 50000, synack, 0)
	passes(t, "its answer", h.in(r), r)
}

func TestGlobalGroupRules(t *testing.T) {
	h := newHarness(t, `default deny
deny from peer:w2 to any
allow from group:workers to group:head proto tcp port 6817-6819
`, "", nil)
	ok := tcpPkt(w1IP, 40000, selfIP, 6817, syn, 0)
	passes(t, "worker to slurmctld", h.in(ok), ok)
	passes(t, "worker to another port", h.in(tcpPkt(w1IP, 40001, selfIP, 6820, syn, 0)))
	passes(t, "non-worker", h.in(tcpPkt(xIP, 40000, selfIP, 6817, syn, 0)))
	passes(t, "denied worker", h.in(tcpPkt(w2IP, 40000, selfIP, 6818, syn, 0)))
	st := h.f.Stats()
	for _, c := range []struct {
		allow   bool
		rule    int
		packets uint64
	}{{true, 1, 1}, {false, 0, 1}, {false, -1, 2}} {
		if got := rule(st, c.allow, policy.LayerGlobal, c.rule); got.Packets != c.packets {
			t.Errorf("rule %d allow=%v: %d packets, want %d", c.rule, c.allow, got.Packets, c.packets)
		}
	}
	if got := rule(st, true, policy.LayerGlobal, 1).Text; !strings.Contains(got, "6817-6819") {
		t.Errorf("explanation %q does not name the rule", got)
	}
}

func TestUnknownAndInvalidDropped(t *testing.T) {
	h := newHarness(t, "default allow\n", "", nil)
	passes(t, "from unknown peer", h.in(udpPkt(ghost, 1, selfIP, 2, 10)))
	passes(t, "to unknown peer", h.out(udpPkt(selfIP, 1, ghost, 2, 10)))
	passes(t, "to another host via this one", h.in(udpPkt(w1IP, 1, "198.18.0.5", 2, 10)))
	passes(t, "not from this host", h.out(udpPkt("240.0.0.50", 1, w1IP, 2, 10)))
	v6 := make([]byte, 60)
	v6[0] = 0x60
	passes(t, "IPv6", h.in(v6))
	passes(t, "garbage in", h.in([]byte{0x45, 0, 0}))
	passes(t, "garbage out", h.out([]byte{0x45, 1, 2, 3}))
	st := h.f.Stats()
	if st.UnknownPeer != 2 || st.WrongAddress != 2 || st.IPv6 != 1 || st.Malformed != 2 || st.Flows != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestFlowExpiry(t *testing.T) {
	h := newHarness(t, `default deny
allow from group:head to any proto udp port 53
allow from group:head to any proto tcp port 443
`, "", nil)
	q := udpPkt(selfIP, 5000, w1IP, 53, 10)
	r := udpPkt(w1IP, 53, selfIP, 5000, 10)
	s := tcpPkt(selfIP, 50000, w1IP, 443, syn, 0)
	sa := tcpPkt(w1IP, 443, selfIP, 50000, synack, 0)
	d := tcpPkt(w1IP, 443, selfIP, 50000, ack, 100)
	h.out(q, s)
	h.in(sa)

	h.clock.add(59 * time.Second)
	passes(t, "answer after 59 s", h.in(r), r)
	h.clock.add(61 * time.Second)
	if n := h.f.Sweep(); n != 1 {
		t.Fatalf("sweep after 61 s idle removed %d, want 1 (the UDP flow)", n)
	}
	passes(t, "answer after expiry", h.in(r))
	passes(t, "established TCP after 120 s", h.in(d), d)

	h.clock.add(time.Hour + time.Second)
	lone := tcpPkt(selfIP, 50001, w1IP, 443, syn, 0)
	h.out(lone)
	h.clock.add(31 * time.Second)
	if n := h.f.Sweep(); n != 2 {
		t.Fatalf("sweep removed %d, want 2 (idle established TCP, unanswered SYN)", n)
	}
	passes(t, "TCP after expiry", h.in(d))
	if st := h.f.Stats(); st.Expired != 3 || st.Flows != 0 {
		t.Errorf("expired %d flows %d; want 3, 0", st.Expired, st.Flows)
	}
}

func TestTableBound(t *testing.T) {
	h := newHarness(t, "default deny\nallow from group:head to any proto udp\n", "",
		func(c *Config) { c.MaxFlows = 100 })
	for i := 0; i < 1000; i++ {
		h.out(udpPkt(selfIP, uint16(10000+i), w1IP, 53, 0))
		h.clock.add(time.Millisecond)
	}
	st := h.f.Stats()
	if st.Flows > 100 || st.Evicted < 900 {
		t.Fatalf("flows %d evicted %d; want <= 100, >= 900", st.Flows, st.Evicted)
	}
	last := udpPkt(w1IP, 53, selfIP, 10999, 0)
	passes(t, "answer to the newest flow", h.in(last), last)
	passes(t, "answer to an evicted flow", h.in(udpPkt(w1IP, 53, selfIP, 10000, 0)))

	// Expired flows make room before live ones are evicted.
	h.clock.add(2 * time.Minute)
	h.out(udpPkt(selfIP, 9999, w1IP, 53, 0))
	if st2 := h.f.Stats(); st2.Evicted != st.Evicted || st2.Flows != 1 {
		t.Errorf("after expiry: evicted %d (was %d), flows %d; want no eviction, 1 flow", st2.Evicted, st.Evicted, st2.Flows)
	}
}

func TestPolicyChangeStopsEstablishedFlow(t *testing.T) {
	h := newHarness(t, "default allow\n", "", nil)
	open := func(sport, port uint16) (in, out []byte) {
		h.in(tcpPkt(w1IP, sport, selfIP, port, syn, 0))
		h.out(tcpPkt(selfIP, port, w1IP, sport, synack, 0))
		return tcpPkt(w1IP, sport, selfIP, port, ack, 10), tcpPkt(selfIP, port, w1IP, sport, ack, 10)
	}
	in22, out22 := open(40000, 22)
	in80, _ := open(40001, 80)
	passes(t, "established 22", h.in(in22), in22)

	if n := h.f.SetEngine(engine(t, "default allow\ndeny from any to group:head proto tcp port 22\n", "")); n != 1 {
		t.Fatalf("SetEngine stopped %d flows, want 1", n)
	}
	passes(t, "port 22 in after the change", h.in(in22))
	passes(t, "port 22 out after the change", h.out(out22))
	passes(t, "new SYN to 22", h.in(tcpPkt(w1IP, 40000, selfIP, 22, syn, 0)))
	passes(t, "port 80 still flows", h.in(in80), in80)
	if got := rule(h.f.Stats(), false, policy.LayerGlobal, 0); got.Packets != 3 {
		t.Errorf("deny rule counted %d packets, want 3", got.Packets)
	}

	// A revocation: the peer disappears from Peers, then Reevaluate.
	h.peers.remove(w1IP)
	if n := h.f.Reevaluate(); n != 1 { // the refused SYN replaced the port 22 flow
		t.Fatalf("Reevaluate removed %d flows, want 1", n)
	}
	passes(t, "revoked peer's established flow", h.in(in80))
	passes(t, "revoked peer's new flow", h.in(udpPkt(w1IP, 1, selfIP, 2, 0)))
	if st := h.f.Stats(); st.Flows != 0 || st.UnknownPeer != 1 {
		t.Errorf("flows %d unknown %d; want 0, 1", st.Flows, st.UnknownPeer)
	}
}

func TestFlushStopsEstablishedFlow(t *testing.T) {
	h := newHarness(t, "default deny\nallow from group:workers to group:head proto tcp port 22\n", "", nil)
	h.in(tcpPkt(w1IP, 40000, selfIP, 22, syn, 0))
	h.out(tcpPkt(selfIP, 22, w1IP, 40000, synack, 0))
	d := tcpPkt(w1IP, 40000, selfIP, 22, ack, 10)
	passes(t, "before flush", h.in(d), d)

	// The new policy refuses port 22; Flush applies it to the table.
	h.f.SetEngine(engine(t, "default deny\n", ""))
	h.f.SetEngine(engine(t, "default deny\nallow from group:workers to group:head proto tcp port 22\n", ""))
	passes(t, "allowed again after re-enable", h.in(d), d)
	if n := h.f.Flush(); n != 1 {
		t.Fatalf("Flush removed %d, want 1", n)
	}
	passes(t, "after flush in", h.in(d))
	passes(t, "after flush out", h.out(tcpPkt(selfIP, 22, w1IP, 40000, ack, 10)))
	if st := h.f.Stats(); st.NoFlow != 2 || st.Removed != 1 {
		t.Errorf("noflow %d removed %d; want 2, 1", st.NoFlow, st.Removed)
	}
}

func TestCountersBytes(t *testing.T) {
	h := newHarness(t, "default deny\nallow from any to group:head proto udp port 7\n", "", nil)
	a := udpPkt(w1IP, 1000, selfIP, 7, 100)
	b := udpPkt(selfIP, 7, w1IP, 1000, 50)
	h.in(a, a)
	h.out(b)
	got := rule(h.f.Stats(), true, policy.LayerGlobal, 0)
	want := RuleStats{Flows: 1, Packets: 3, Bytes: uint64(2*len(a) + len(b))}
	if got.Flows != want.Flows || got.Packets != want.Packets || got.Bytes != want.Bytes {
		t.Errorf("got %d/%d/%d, want %d/%d/%d", got.Flows, got.Packets, got.Bytes, want.Flows, want.Packets, want.Bytes)
	}
}

func TestFragments(t *testing.T) {
	h := newHarness(t, "default deny\nallow from any to group:head proto udp port 7\n", "", nil)
	first, later := fragment(udpPkt(w1IP, 1000, selfIP, 7, 40))
	passes(t, "first and later fragment", h.in(first, later), first, later)
	_, orphan := fragment(udpPkt(w1IP, 1000, selfIP, 8, 40))
	orphan[5] = 0x99 // another IP ID
	passes(t, "later fragment without its first", h.in(orphan))
	if got := h.f.Stats().Fragments; got != 1 {
		t.Errorf("Fragments = %d, want 1", got)
	}
}

func TestDenialLogRateLimited(t *testing.T) {
	var buf bytes.Buffer
	h := newHarness(t, "default deny\n", "", func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&buf, nil))
	})
	for i := 0; i < 10; i++ {
		h.in(udpPkt(w1IP, 1, selfIP, 2, 0))
	}
	h.clock.add(2 * time.Second)
	h.in(udpPkt(w1IP, 1, selfIP, 2, 0))
	if got := strings.Count(buf.String(), "packet refused"); got != 2 {
		t.Errorf("%d log lines, want 2:\n%s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "suppressed=9") {
		t.Errorf("log does not count suppressed denials:\n%s", buf.String())
	}
}

func TestRunStopsWithContext(t *testing.T) {
	h := newHarness(t, "default allow\n", "", nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- h.f.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}

// TestConcurrent runs Read, several Writes and policy changes at once (for
// the race detector).
func TestConcurrent(t *testing.T) {
	h := newHarness(t, "default allow\n", "", func(c *Config) { c.MaxFlows = 256 })
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Go(func() {
			for i := 0; i < 300; i++ {
				p := udpPkt(w1IP, uint16(1000+i%50), selfIP, uint16(w), 10)
				buf := append(make([]byte, headroom), p...)
				if _, err := h.f.Write([][]byte{buf}, headroom); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Go(func() {
		for i := 0; i < 300; i++ {
			h.out(udpPkt(selfIP, uint16(i), xIP, 9, 10))
		}
	})
	wg.Go(func() {
		for i := 0; i < 20; i++ {
			h.f.SetEngine(engine(t, "default allow\ndeny from any to any proto udp port 9\n", ""))
			h.f.Sweep()
			h.f.Stats()
			if i%5 == 0 {
				h.f.Flush()
			}
		}
	})
	wg.Wait()
	if n := h.f.Len(); n > 256 {
		t.Errorf("table holds %d flows, bound 256", n)
	}
}

// TestMixedBatchOneShard runs batches that mix flows in a one-shard table,
// where the batch's held flow shares its lock with every other lookup.
func TestMixedBatchOneShard(t *testing.T) {
	h := newHarness(t, "default allow\ndeny from any to group:head proto tcp port 23\n", "",
		func(c *Config) { c.MaxFlows = 64 })
	if len(h.f.tab.shards) != 1 {
		t.Fatalf("%d shards, want 1", len(h.f.tab.shards))
	}
	a := udpPkt(w1IP, 1, selfIP, 7, 10)
	bSyn := tcpPkt(w1IP, 2, selfIP, 22, syn, 0)
	denied := tcpPkt(w1IP, 3, selfIP, 23, syn, 0)
	ping := icmpEcho(w1IP, selfIP, 8, 5)
	unr := icmpError(w1IP, selfIP, 3, 3, udpPkt(selfIP, 7, w1IP, 1, 0))
	passes(t, "mixed batch", h.in(a, a, bSyn, a, denied, a, ping, unr, a), a, a, bSyn, a, a, ping, unr, a)
	r := udpPkt(selfIP, 7, w1IP, 1, 10)
	passes(t, "mixed read batch", h.out(r, tcpPkt(selfIP, 22, w1IP, 2, synack, 0), r, udpPkt(selfIP, 8, ghost, 1, 0), r),
		r, tcpPkt(selfIP, 22, w1IP, 2, synack, 0), r, r)
}

// TestSYNReopensClosedFlow: after FIN/RST a new SYN on the same 5-tuple is
// a new flow, decided again, with its own direction.
func TestSYNReopensClosedFlow(t *testing.T) {
	h := newHarness(t, "default allow\n", "domain 192.0.2.0/24\noutside inbound deny\n", nil)
	s := tcpPkt(selfIP, 22, xIP, 40000, syn, 0)
	passes(t, "this host opens", h.out(s), s)
	rst := tcpPkt(xIP, 40000, selfIP, 22, tcpRST|tcpACK, 0)
	passes(t, "RST back", h.in(rst), rst)
	passes(t, "outside peer reuses the tuple to open inbound", h.in(tcpPkt(xIP, 40000, selfIP, 22, syn, 0)))
}

// TestWriteKeepsHeadroom: the packets handed to the inner device keep their
// headroom (the virtio header goes there on Linux).
func TestWriteKeepsHeadroom(t *testing.T) {
	h := newHarness(t, "default deny\nallow from any to any proto udp port 7\n", "", nil)
	good := udpPkt(w1IP, 1, selfIP, 7, 10)
	bad := udpPkt(w1IP, 1, selfIP, 8, 10)
	bufs := [][]byte{append(make([]byte, headroom), bad...), append(make([]byte, headroom), good...)}
	var seen [][]byte
	inner := &writeSpy{fakeTUN: h.dev, got: &seen}
	f, err := New(inner, Config{Engine: h.f.pol.Load().eng, Peers: h.peers})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := f.Write(bufs, headroom); n != 2 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if len(seen) != 1 || len(seen[0]) != headroom+len(good) || string(seen[0][headroom:]) != string(good) {
		t.Fatalf("inner device got %d buffers", len(seen))
	}
}

type writeSpy struct {
	*fakeTUN
	got *[][]byte
}

func (w *writeSpy) Write(bufs [][]byte, offset int) (int, error) {
	*w.got = append(*w.got, bufs...)
	return len(bufs), nil
}
