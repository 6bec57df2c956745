// Package upnptest has an in-memory UPnP gateway for tests of code that
// uses vnet/upnp, and the probe program that the lab tests run inside lab
// hosts (e2e/cmd/pvc-upnp-probe is the same program as a command).
package upnptest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/pvc-project/pvc/vnet/upnp"
)

// ErrDown is what a Gateway that is Down returns: a transport failure.
var ErrDown = errors.New("upnptest: gateway down")

// Gateway is an in-memory Internet Gateway Device that behaves like
// miniupnpd in the ways the Mapper cares about: leases expire, a port held
// by another client is a 718 conflict, listing past the end is 713.
// The zero value is not usable: use NewGateway.
type Gateway struct {
	local    netip.Addr
	external netip.Addr

	mu            sync.Mutex // guards the fields below
	table         []entry
	down          bool
	absent        bool
	onlyPermanent bool
	refuse        *upnp.Error // refuse every AddPortMapping with it
	calls         []string
	now           func() time.Time
}

type entry struct {
	m       upnp.Mapping
	expires time.Time // zero: permanent
}

// NewGateway returns a gateway whose clients see themselves as local and
// whose WAN address is external.
func NewGateway(local, external netip.Addr) *Gateway {
	return &Gateway{local: local, external: external, now: time.Now}
}

var _ upnp.Gateway = (*Gateway)(nil)

// Discover finds g, as Config.Discover; after SetAbsent(true) it waits for
// ctx like an SSDP search that nobody answers, then fails.
func (g *Gateway) Discover(ctx context.Context, rootURL string) (upnp.Gateway, error) {
	g.mu.Lock()
	g.calls = append(g.calls, "Discover")
	absent := g.absent
	g.mu.Unlock()
	if absent {
		<-ctx.Done()
		return nil, fmt.Errorf("%w: no answer to SSDP search", upnp.ErrNoGateway)
	}
	return g, nil
}

// SetDown makes every request fail with a transport error (ErrDown).
func (g *Gateway) SetDown(down bool) { g.mu.Lock(); g.down = down; g.mu.Unlock() }

// SetAbsent makes Discover find nothing.
func (g *Gateway) SetAbsent(absent bool) { g.mu.Lock(); g.absent = absent; g.mu.Unlock() }

// SetOnlyPermanent makes the gateway refuse leases other than 0 (725).
func (g *Gateway) SetOnlyPermanent(v bool) { g.mu.Lock(); g.onlyPermanent = v; g.mu.Unlock() }

// SetExternal changes the WAN address.
func (g *Gateway) SetExternal(a netip.Addr) { g.mu.Lock(); g.external = a; g.mu.Unlock() }

// Refuse makes every AddPortMapping fail with e (nil: accept again).
func (g *Gateway) Refuse(e *upnp.Error) { g.mu.Lock(); g.refuse = e; g.mu.Unlock() }

// Plant adds a mapping as another client (or an earlier run) would have.
func (g *Gateway) Plant(m upnp.Mapping) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.table = append(g.table, g.entryLocked(m))
}

// Forget deletes a mapping behind its owner's back, as a router reboot does.
func (g *Gateway) Forget(port uint16, proto string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.table = slices.DeleteFunc(g.table, func(e entry) bool { return e.m.ExternalPort == port && e.m.Protocol == proto })
}

// Mappings returns the live mappings, lease being what is left.
func (g *Gateway) Mappings() []upnp.Mapping {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.expireLocked()
	out := make([]upnp.Mapping, len(g.table))
	for i, e := range g.table {
		out[i] = e.m
		if !e.expires.IsZero() {
			out[i].Lease = e.expires.Sub(g.now())
		}
	}
	return out
}

// Calls returns the names of the requests made so far, in order.
func (g *Gateway) Calls() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.calls)
}

// Count returns how many requests named op were made.
func (g *Gateway) Count(op string) int {
	n := 0
	for _, c := range g.Calls() {
		if c == op {
			n++
		}
	}
	return n
}

func (g *Gateway) entryLocked(m upnp.Mapping) entry {
	e := entry{m: m}
	if m.Lease > 0 {
		e.expires = g.now().Add(m.Lease)
	}
	return e
}

func (g *Gateway) expireLocked() {
	now := g.now()
	g.table = slices.DeleteFunc(g.table, func(e entry) bool { return !e.expires.IsZero() && !now.Before(e.expires) })
}

// begin records op and returns ErrDown if the gateway is down. Must hold g.mu.
func (g *Gateway) beginLocked(ctx context.Context, op string) error {
	g.calls = append(g.calls, op)
	if err := ctx.Err(); err != nil {
		return err
	}
	if g.down {
		return ErrDown
	}
	g.expireLocked()
	return nil
}

func (g *Gateway) find(port uint16, proto string) int {
	return slices.IndexFunc(g.table, func(e entry) bool { return e.m.ExternalPort == port && e.m.Protocol == proto })
}

// AddPortMapping implements upnp.Gateway.
func (g *Gateway) AddPortMapping(ctx context.Context, m upnp.Mapping) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.beginLocked(ctx, "AddPortMapping"); err != nil {
		return err
	}
	if g.refuse != nil {
		return g.refuse
	}
	if g.onlyPermanent && m.Lease != 0 {
		return &upnp.Error{Code: upnp.CodeOnlyPermanentLeases, Description: "OnlyPermanentLeasesSupported"}
	}
	if i := g.find(m.ExternalPort, m.Protocol); i >= 0 {
		if g.table[i].m.InternalClient != m.InternalClient {
			return &upnp.Error{Code: upnp.CodeConflictInMappingEntry, Description: "ConflictInMappingEntry"}
		}
		g.table[i] = g.entryLocked(m) // renewal
		return nil
	}
	g.table = append(g.table, g.entryLocked(m))
	return nil
}

// DeletePortMapping implements upnp.Gateway.
func (g *Gateway) DeletePortMapping(ctx context.Context, port uint16, proto string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.beginLocked(ctx, "DeletePortMapping"); err != nil {
		return err
	}
	i := g.find(port, proto)
	if i < 0 {
		return &upnp.Error{Code: upnp.CodeNoSuchEntry, Description: "NoSuchEntryInArray"}
	}
	g.table = slices.Delete(g.table, i, i+1)
	return nil
}

// PortMappingByIndex implements upnp.Gateway.
func (g *Gateway) PortMappingByIndex(ctx context.Context, index uint16) (upnp.Mapping, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.beginLocked(ctx, "GetGenericPortMappingEntry"); err != nil {
		return upnp.Mapping{}, err
	}
	if int(index) >= len(g.table) {
		return upnp.Mapping{}, &upnp.Error{Code: upnp.CodeArrayIndexInvalid, Description: "SpecifiedArrayIndexInvalid"}
	}
	return g.table[index].m, nil
}

// PortMapping implements upnp.Gateway.
func (g *Gateway) PortMapping(ctx context.Context, port uint16, proto string) (upnp.Mapping, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.beginLocked(ctx, "GetSpecificPortMappingEntry"); err != nil {
		return upnp.Mapping{}, err
	}
	i := g.find(port, proto)
	if i < 0 {
		return upnp.Mapping{}, &upnp.Error{Code: upnp.CodeNoSuchEntry, Description: "NoSuchEntryInArray"}
	}
	return g.table[i].m, nil
}

// ExternalIP implements upnp.Gateway.
func (g *Gateway) ExternalIP(ctx context.Context) (netip.Addr, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.beginLocked(ctx, "GetExternalIPAddress"); err != nil {
		return netip.Addr{}, err
	}
	return g.external, nil
}

// LocalAddr implements upnp.Gateway.
func (g *Gateway) LocalAddr() netip.Addr { return g.local }

// Location implements upnp.Gateway.
func (g *Gateway) Location() string { return "upnptest " + g.external.String() }
