package daemon

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/pvcd/control"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/endpoint"
	"github.com/pvc-project/pvc/security/policy"
	"github.com/pvc-project/pvc/vnet/bind"
	"github.com/pvc-project/pvc/vnet/dns"
	"github.com/pvc-project/pvc/vnet/dns/hostdns"
	"github.com/pvc-project/pvc/vnet/filter"
	"github.com/pvc-project/pvc/vnet/overlay"
)

// daemon is the running state; its methods implement control.Backend.
type daemon struct {
	cfg    Config
	log    *slog.Logger
	bundle *bundle.Bundle
	cert   *cert.Cert
	sk     ed25519.PrivateKey
	local  *policy.Local
	since  time.Time
	stop   context.CancelFunc

	client *client.Client
	filter *filter.Filter
	dir    *dns.MemDirectory
	hosts  hostdns.Integration

	pm atomic.Pointer[pathManager] // set once the overlay runs

	verified map[string]*cert.Cert // certificate objects whose signature sync verified (sync's goroutine only)

	mu      sync.Mutex // guards ov, policyV
	ov      *overlay.Overlay
	policyV uint64 // version of the global policy in the filter; 0: none yet
}

func (d *daemon) setOverlay(o *overlay.Overlay) { d.mu.Lock(); d.ov = o; d.mu.Unlock() }

func (d *daemon) overlayOrNil() *overlay.Overlay { d.mu.Lock(); defer d.mu.Unlock(); return d.ov }

// engine compiles the policy for this host; a nil global denies every
// flow (no policy has arrived from the brokers yet).
func (d *daemon) engine(g *policy.Global) (*policy.Engine, error) {
	if g == nil {
		var err error
		if g, err = policy.ParseGlobal([]byte("default deny\n")); err != nil {
			return nil, err
		}
	}
	return policy.NewEngine(g, d.local, policy.Identity{Name: d.cert.Name, Groups: d.cert.Groups})
}

// syncLoop keeps the overlay's peers, the filter's policy and the names in
// step with the verified view of the cluster.
func (d *daemon) syncLoop(ctx context.Context) {
	v := d.client.View()
	known := map[string]bool{}
	for {
		changed := v.Changed()
		d.sync(v, known)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-time.After(10 * time.Second): // certificates expire without a change
		}
	}
}

func (d *daemon) sync(v *client.View, known map[string]bool) {
	o := d.overlayOrNil()
	now := time.Now()
	ts := v.Revocation()
	seen := map[string]bool{}
	var names []dns.Peer
	names = append(names, dns.Peer{Name: d.cert.Name, Addr: d.cert.IP})
	for _, c := range v.Peers() {
		if c.Name == d.cert.Name {
			continue
		}
		var rev cert.Revocation
		if ts != nil {
			rev = ts
		}
		// The signature of a certificate object verified before is not
		// checked again; validity and revocation are, at every change.
		var err error
		if d.verified[c.Name] == c {
			err = c.CheckValid(d.bundle.Cluster, now, rev)
		} else if err = c.Verify(d.bundle.MasterKey, d.bundle.Cluster, now, rev); err == nil {
			d.verified[c.Name] = c
		}
		if err != nil {
			continue
		}
		seen[c.Name] = true
		names = append(names, dns.Peer{Name: c.Name, Addr: c.IP})
		// No WireGuard keepalive: the Bind probes a confirmed direct path
		// every 2 s, which keeps NAT mappings open both ways, and turning
		// keepalive on when a peer reaches us first starts a second
		// handshake that collides with the peer's (5 s stall).
		p := overlay.Peer{Name: c.Name, IP: c.IP, Key: c.WGKey}
		if r := v.Endpoints(c.Name); r != nil {
			p.Candidates = candidates(r.Endpoints)
		}
		if err := o.SetPeer(p); err != nil {
			d.log.Warn("peer", "peer", c.Name, "err", err)
			continue
		}
		if !known[c.Name] {
			d.log.Info("peer known", "peer", c.Name, "ip", c.IP, "candidates", len(p.Candidates))
		}
		known[c.Name] = true
	}
	removed := false
	for name := range known {
		if !seen[name] {
			_ = o.RemovePeer(name)
			delete(d.verified, name)
			if pm := d.pm.Load(); pm != nil {
				pm.removed(name)
			}
			delete(known, name)
			removed = true
			d.log.Info("peer removed (revoked, expired or gone)", "peer", name)
		}
	}
	if removed {
		d.filter.Reevaluate()
	}
	if g := v.Policy(); g != nil {
		d.mu.Lock()
		newer := g.Version != d.policyV
		d.mu.Unlock()
		if newer {
			if eng, err := d.engine(g); err == nil {
				d.filter.SetEngine(eng)
				d.mu.Lock()
				d.policyV = g.Version
				d.mu.Unlock()
				d.log.Info("global policy in force", "version", g.Version)
			}
		}
	}
	if err := d.dir.Replace(names); err != nil {
		d.log.Warn("names", "err", err)
	}
	hosts := make([]hostdns.Host, len(names))
	for i, n := range names {
		hosts[i] = hostdns.Host{Name: n.Name, Addr: n.Addr}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // a bounded file rewrite
	defer cancel()
	if err := d.hosts.Apply(ctx, hosts); err != nil {
		d.log.Warn("host resolver", "err", err)
	}
}

func (d *daemon) undoHosts() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // runs after the daemon's ctx ended
	defer cancel()
	if err := d.hosts.Undo(ctx); err != nil {
		d.log.Warn("undo host resolver", "err", err)
	}
}

// publishLoop publishes the host's certificate and its endpoint record
// (host addresses, and the public address the brokers observe) when they
// change, and every minute.
func (d *daemon) publishLoop(ctx context.Context, rawCert []byte) {
	var last string
	var lastAt time.Time
	for {
		o := d.overlayOrNil()
		eps := d.endpoints(o.Port())
		key := fmt.Sprint(eps)
		if len(d.client.Connected()) > 0 && (key != last || time.Since(lastAt) > time.Minute) {
			_ = d.client.Publish(ctx, rawCert)
			r := &endpoint.Record{Cluster: d.bundle.Cluster, Name: d.cert.Name, Version: uint64(time.Now().UnixNano()), Endpoints: eps}
			if err := r.Sign(d.sk); err == nil {
				if err := d.client.Publish(ctx, r.Encode()); err == nil {
					last, lastAt = key, time.Now()
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// endpoints lists where other peers may try this host directly.
func (d *daemon) endpoints(port uint16) []endpoint.Endpoint {
	var eps []endpoint.Endpoint
	seen := map[netip.AddrPort]bool{}
	add := func(k endpoint.Kind, a netip.Addr) {
		ap := netip.AddrPortFrom(a, port)
		if !seen[ap] && len(eps) < endpoint.Max {
			seen[ap] = true
			eps = append(eps, endpoint.Endpoint{Kind: k, Addr: ap})
		}
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := p.Addr()
		if ip.Is4() && !ip.IsLoopback() && !d.bundle.Subnet.Contains(ip) && !ip.IsLinkLocalUnicast() {
			add(endpoint.Host, ip)
		}
	}
	if pm := d.pm.Load(); pm != nil {
		if ext, ok := pm.mapped(); ok && len(eps) < endpoint.Max && !seen[ext] {
			seen[ext] = true
			eps = append(eps, endpoint.Endpoint{Kind: endpoint.UPnP, Addr: ext})
		}
	}
	// The brokers see our NAT's address; a port-preserving NAT keeps ours.
	obs := d.client.Observed()
	keys := make([]string, 0, len(obs))
	for k := range obs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		add(endpoint.Observed, obs[k].Addr())
	}
	return eps
}

// viewPeers gives the filter the identity of the peer behind a virtual IP.
type viewPeers struct{ d *daemon }

func (p viewPeers) PeerByIP(ip netip.Addr) (policy.Peer, bool) {
	v := p.d.client.View()
	c := v.ByIP(ip)
	if c == nil {
		return policy.Peer{}, false
	}
	pp := policy.Peer{Name: c.Name, Groups: c.Groups}
	if r := v.Endpoints(c.Name); r != nil {
		// Its public address: the observed one, else its UPnP mapping or
		// its own address (a record lists an address once, so a host
		// without NAT has no separate observed entry).
		if ap, ok := public(r.Endpoints); ok {
			pp.Underlay = ap.Addr()
		}
	}
	return pp, true
}

// relayAdapter sends the overlay's relayed datagrams through the brokers.
type relayAdapter struct{ c *client.Client }

func (r relayAdapter) SendRelay(peer string, pkt []byte) error { return r.c.Relay(peer, pkt) }

// probeAuth signs path probes with the host's signing key and verifies a
// peer's with the key in its verified certificate.
type probeAuth struct{ d *daemon }

func (a probeAuth) Sign(msg []byte) []byte { return ed25519.Sign(a.d.sk, msg) }

func (a probeAuth) Verify(peer string, msg, sig []byte) bool {
	c := a.d.client.View().Cert(peer)
	return c != nil && len(sig) == ed25519.SignatureSize && ed25519.Verify(c.SignKey, msg, sig)
}

// Status implements control.Backend.
func (d *daemon) Status() control.Status {
	st := control.Status{Cluster: d.bundle.Cluster, Name: d.cert.Name, VirtualIP: d.cert.IP, Subnet: d.bundle.Subnet,
		Interface: d.cfg.Interface, Domain: d.bundle.Domain, Since: d.since, Version: d.cfg.Version}
	if o := d.overlayOrNil(); o != nil {
		st.Port = o.Port()
		st.Oversize = o.Bind().Oversize()
	}
	if d.filter != nil {
		st.MTU, _ = d.filter.MTU()
	}
	connected := map[string]bool{}
	for _, a := range d.client.Connected() {
		connected[a] = true
	}
	obs := d.client.Observed()
	for _, b := range d.bundle.Brokers {
		bs := control.BrokerStatus{Addr: b.Addr, Connected: connected[b.Addr]}
		if o, ok := obs[b.Addr]; ok {
			bs.Observed = o.String()
		}
		st.Brokers = append(st.Brokers, bs)
	}
	for _, p := range d.overlayOrNil().Peers() {
		st.Peers++
		if p.Active {
			st.Active++
		}
	}
	return st
}

// Peers implements control.Backend.
func (d *daemon) Peers() []control.Peer {
	var out []control.Peer
	for _, p := range d.overlayOrNil().Peers() {
		cp := control.Peer{Name: p.Name, VirtualIP: p.IP, Path: string(p.Path), Remote: p.Remote,
			LastHandshake: p.LastHandshake, BytesIn: p.RxBytes, BytesOut: p.TxBytes}
		if !p.Active {
			cp.Path = "none"
		} else if pm := d.pm.Load(); pm != nil {
			cp.Why = pm.whyNot(p.Name, p.Path)
		}
		out = append(out, cp)
	}
	return out
}

// Ping implements control.Backend.
func (d *daemon) Ping(ctx context.Context, name string) (control.PingResult, error) {
	c := d.client.View().Cert(name)
	if c == nil {
		return control.PingResult{}, fmt.Errorf("%w %q in cluster %s", control.ErrUnknownPeer, name, d.bundle.Cluster)
	}
	rtt, err := icmpEcho(ctx, d.cert.IP, c.IP)
	if err != nil {
		return control.PingResult{}, fmt.Errorf("ping %s (%s): %w", name, c.IP, err)
	}
	res := control.PingResult{Peer: name, IP: c.IP, RTT: rtt, Path: "relay"}
	for _, p := range d.overlayOrNil().Peers() {
		if p.Name == name {
			res.Path = string(p.Path)
			if p.Remote != "" {
				res.Path += " " + p.Remote
			}
		}
	}
	return res, nil
}

// Down implements control.Backend.
func (d *daemon) Down() { d.stop() }

var errNoReply = errors.New("no reply")

// candidates turns a peer's signed endpoint record into the addresses its
// direct paths are probed on: its host addresses (direct) and its UPnP
// mapping (upnp). Its observed public address is no candidate of its own:
// crossing a NAT needs both sides to punch, which ICE does with the exact
// mapping of the shared socket.
func candidates(eps []endpoint.Endpoint) []bind.Candidate {
	var out []bind.Candidate
	for _, e := range eps {
		switch e.Kind {
		case endpoint.Host:
			out = append(out, bind.Candidate{Addr: e.Addr, Kind: bind.PathDirect})
		case endpoint.UPnP:
			out = append(out, bind.Candidate{Addr: e.Addr, Kind: bind.PathUPnP})
		}
	}
	return out
}

// knownPeer reports whether name is a certified peer in the overlay.
func (d *daemon) knownPeer(name string) bool {
	for _, p := range d.overlayOrNil().Peers() {
		if p.Name == name {
			return true
		}
	}
	return false
}
