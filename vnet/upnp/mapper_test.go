package upnp_test

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/vnet/upnp"
	"github.com/pvc-project/pvc/vnet/upnp/upnptest"
)

var (
	lanAddr = netip.MustParseAddr("198.18.1.2")
	wanAddr = netip.MustParseAddr("203.0.113.100")
)

// run starts a Mapper over g and returns its statuses and a stop function
// that cancels it and returns Run's error.
func run(t *testing.T, g *upnptest.Gateway, mod func(*upnp.Config)) (*upnp.Mapper, <-chan upnp.Status, func() error) {
	t.Helper()
	before := runtime.NumGoroutine()
	ch := make(chan upnp.Status, 1000)
	cfg := upnp.Config{Cluster: "lab", Peer: "h1", Port: 7400, Lease: 200 * time.Millisecond,
		RetryMin: 50 * time.Millisecond, RetryMax: 100 * time.Millisecond, DiscoverTimeout: 100 * time.Millisecond,
		Discover: g.Discover, OnStatus: func(s upnp.Status) { ch <- s }}
	if mod != nil {
		mod(&cfg)
	}
	m := upnp.New(cfg)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	stopped := false
	stop := func() error {
		cancel()
		err := <-done
		stopped = true
		// Every goroutine the Mapper started has ended.
		deadline := time.Now().Add(time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			t.Errorf("%d goroutines after Run returned, %d before", n, before)
		}
		return err
	}
	t.Cleanup(func() {
		if !stopped {
			_ = stop()
		}
	})
	return m, ch, stop
}

// await returns the first status in state within timeout.
func await(t *testing.T, ch <-chan upnp.Status, state upnp.State, timeout time.Duration) upnp.Status {
	t.Helper()
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	for {
		select {
		case s := <-ch:
			if s.State == state {
				return s
			}
		case <-tm.C:
			t.Fatalf("no %v status within %v", state, timeout)
		}
	}
}

func TestMapRefreshDelete(t *testing.T) {
	g := upnptest.NewGateway(lanAddr, wanAddr)
	m, ch, stop := run(t, g, nil)
	s := await(t, ch, upnp.StateMapped, time.Second)
	if want := netip.AddrPortFrom(wanAddr, 7400); s.External != want {
		t.Errorf("external %v, want %v", s.External, want)
	}
	if s.Internal != netip.AddrPortFrom(lanAddr, 7400) || s.Why() != "" {
		t.Errorf("internal %v why %q", s.Internal, s.Why())
	}
	time.Sleep(3 * 200 * time.Millisecond) // three leases
	ms := g.Mappings()
	if len(ms) != 1 || ms[0].Description != "pvc lab h1" || ms[0].InternalClient != lanAddr || ms[0].Lease <= 0 {
		t.Fatalf("after 3 leases: %v", ms)
	}
	if n := g.Count("AddPortMapping"); n < 4 {
		t.Errorf("%d AddPortMapping calls in 3 leases, want >= 4 (map + renewals at half lease)", n)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if ms := g.Mappings(); len(ms) != 0 {
		t.Errorf("after stop: %v", ms)
	}
	if st := m.Status(); st.State != upnp.StateStopped {
		t.Errorf("status after stop: %v", st.State)
	}
}

func TestStaleRemovedOthersKept(t *testing.T) {
	g := upnptest.NewGateway(lanAddr, wanAddr)
	old := netip.MustParseAddr("198.18.1.9") // this peer had another address last time
	g.Plant(upnp.Mapping{ExternalPort: 7400, Protocol: "UDP", InternalPort: 7400, InternalClient: old, Description: "pvc lab h1"})
	g.Plant(upnp.Mapping{ExternalPort: 9000, Protocol: "UDP", InternalPort: 9000, InternalClient: lanAddr, Description: "pvc lab h1"})
	other := upnp.Mapping{ExternalPort: 7401, Protocol: "UDP", InternalPort: 7400, InternalClient: netip.MustParseAddr("198.18.1.3"), Description: "pvc lab h2"}
	g.Plant(other)
	foreign := upnp.Mapping{ExternalPort: 7402, Protocol: "TCP", InternalPort: 22, InternalClient: lanAddr, Description: "pvc lab h1 ssh"}
	g.Plant(foreign)
	_, ch, stop := run(t, g, nil)
	s := await(t, ch, upnp.StateMapped, time.Second)
	if s.External.Port() != 7400 {
		t.Errorf("mapped %v: the stale mapping's port should be free again", s.External)
	}
	got := map[uint16]upnp.Mapping{}
	for _, m := range g.Mappings() {
		got[m.ExternalPort] = m
	}
	if len(got) != 3 || got[7400].InternalClient != lanAddr || got[7401].Description != other.Description || got[7402].Description != foreign.Description {
		t.Errorf("table after start: %v", g.Mappings())
	}
	if n := g.Count("DeletePortMapping"); n != 2 {
		t.Errorf("%d deletions, want 2 (the stale ones)", n)
	}
	_ = stop()
	if n := len(g.Mappings()); n != 2 {
		t.Errorf("other peers' mappings gone: %v", g.Mappings())
	}
}

func TestConflictTriesOtherPorts(t *testing.T) {
	g := upnptest.NewGateway(lanAddr, wanAddr)
	g.Plant(upnp.Mapping{ExternalPort: 7400, Protocol: "UDP", InternalPort: 7400, InternalClient: netip.MustParseAddr("198.18.1.3"), Description: "pvc lab h2"})
	_, ch, stop := run(t, g, nil)
	s := await(t, ch, upnp.StateMapped, time.Second)
	if s.External.Port() == 7400 || s.External.Port() < 1024 {
		t.Fatalf("mapped %v despite the conflict", s.External)
	}
	_ = stop()
	// The next run tries the same ports: the peer keeps its endpoint.
	_, ch, stop = run(t, g, nil)
	if s2 := await(t, ch, upnp.StateMapped, time.Second); s2.External != s.External {
		t.Errorf("second run mapped %v, first %v", s2.External, s.External)
	}
	_ = stop()
}

func TestRefused(t *testing.T) {
	g := upnptest.NewGateway(lanAddr, wanAddr)
	g.Refuse(&upnp.Error{Code: 606, Description: "Action not authorized"})
	_, ch, stop := run(t, g, nil)
	s := await(t, ch, upnp.StateFailed, time.Second)
	if !errors.Is(s.Err, upnp.ErrRefused) || s.Why() != "gateway refused mapping: 606 Action not authorized" {
		t.Errorf("err %v, why %q", s.Err, s.Why())
	}
	g.Refuse(nil)
	await(t, ch, upnp.StateMapped, time.Second) // retried after the backoff
	_ = stop()

	// Every port in conflict: the why names the conflict.
	g = upnptest.NewGateway(lanAddr, wanAddr)
	g.Refuse(&upnp.Error{Code: 718, Description: "ConflictInMappingEntry"})
	_, ch, stop = run(t, g, nil)
	s = await(t, ch, upnp.StateFailed, time.Second)
	if s.Why() != "gateway refused mapping: 718 ConflictInMappingEntry" {
		t.Errorf("why %q", s.Why())
	}
	if n := g.Count("AddPortMapping"); n != 9 {
		t.Errorf("%d ports tried, want 9", n)
	}
	_ = stop()
}

func TestOnlyPermanentLeases(t *testing.T) {
	g := upnptest.NewGateway(lanAddr, wanAddr)
	g.SetOnlyPermanent(true)
	_, ch, stop := run(t, g, nil)
	s := await(t, ch, upnp.StateMapped, time.Second)
	if s.Lease != 0 || s.External.Port() != 7400 {
		t.Errorf("mapped %v lease %v", s.External, s.Lease)
	}
	_ = stop()
	if len(g.Mappings()) != 0 {
		t.Errorf("permanent mapping left: %v", g.Mappings())
	}
}

func TestNoGateway(t *testing.T) {
	g := upnptest.NewGateway(lanAddr, wanAddr)
	g.SetAbsent(true)
	_, ch, stop := run(t, g, nil)
	t0 := time.Now()
	s := await(t, ch, upnp.StateFailed, time.Second)
	if took := time.Since(t0); !errors.Is(s.Err, upnp.ErrNoGateway) || s.Why() != "no UPnP gateway found" || took > 800*time.Millisecond {
		t.Errorf("err %v why %q after %v", s.Err, s.Why(), took)
	}
	g.SetAbsent(false) // the router came up
	await(t, ch, upnp.StateMapped, time.Second)
	_ = stop()
}

func TestDisabledSendsNothing(t *testing.T) {
	g := upnptest.NewGateway(lanAddr, wanAddr)
	var st []upnp.Status
	m := upnp.New(upnp.Config{Cluster: "lab", Peer: "h1", Port: 7400, Disabled: true, Discover: g.Discover,
		OnStatus: func(s upnp.Status) { st = append(st, s) }})
	if err := m.Run(t.Context()); !errors.Is(err, upnp.ErrDisabled) {
		t.Fatalf("Run: %v", err)
	}
	if c := g.Calls(); len(c) != 0 {
		t.Errorf("disabled mapper called the gateway: %v", c)
	}
	if len(st) != 1 || st[0].State != upnp.StateDisabled || st[0].Why() != "UPnP forbidden by local policy" {
		t.Errorf("statuses %+v", st)
	}
}

func TestLostMappingMappedAgain(t *testing.T) {
	g := upnptest.NewGateway(lanAddr, wanAddr)
	_, ch, stop := run(t, g, nil)
	await(t, ch, upnp.StateMapped, time.Second)
	g.Forget(7400, "UDP") // router rebooted
	time.Sleep(200 * time.Millisecond)
	if ms := g.Mappings(); len(ms) != 1 || ms[0].ExternalPort != 7400 {
		t.Errorf("not mapped again: %v", ms)
	}
	_ = stop()
}

func TestGatewayGoneThenBack(t *testing.T) {
	g := upnptest.NewGateway(lanAddr, wanAddr)
	_, ch, stop := run(t, g, nil)
	await(t, ch, upnp.StateMapped, time.Second)
	g.SetDown(true)
	t0 := time.Now()
	s := await(t, ch, upnp.StateFailed, time.Second)
	// Renewals are retried until the lease has run out, not longer.
	if took := time.Since(t0); !errors.Is(s.Err, upnp.ErrUnreachable) || took < 100*time.Millisecond || took > time.Second {
		t.Errorf("failed after %v with %v", took, s.Err)
	}
	if s.External.IsValid() {
		t.Errorf("failed status still carries endpoint %v", s.External)
	}
	g.SetDown(false)
	await(t, ch, upnp.StateMapped, time.Second)
	_ = stop()
}

func TestExternalAddressChanges(t *testing.T) {
	g := upnptest.NewGateway(lanAddr, wanAddr)
	_, ch, stop := run(t, g, nil)
	await(t, ch, upnp.StateMapped, time.Second)
	newWAN := netip.MustParseAddr("203.0.113.101")
	g.SetExternal(newWAN)
	if s := await(t, ch, upnp.StateMapped, time.Second); s.External.Addr() != newWAN {
		t.Errorf("new endpoint %v", s.External)
	}
	g.SetExternal(netip.MustParseAddr("100.64.0.7")) // carrier-grade NAT in front
	s := await(t, ch, upnp.StateFailed, time.Second)
	if !errors.Is(s.Err, upnp.ErrNoPublicAddress) || !strings.Contains(s.Why(), "100.64.0.7") {
		t.Errorf("err %v why %q", s.Err, s.Why())
	}
	if len(g.Mappings()) != 0 {
		t.Errorf("useless mapping kept: %v", g.Mappings())
	}
	_ = stop()
}

func TestRunTwice(t *testing.T) {
	g := upnptest.NewGateway(lanAddr, wanAddr)
	m, ch, stop := run(t, g, nil)
	await(t, ch, upnp.StateMapped, time.Second)
	if err := m.Run(t.Context()); !errors.Is(err, upnp.ErrRunning) {
		t.Errorf("second Run: %v", err)
	}
	_ = stop()
}
