package bind

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// Endpoint is one peer as wireguard-go sees it.
type Endpoint struct {
	b    *Bind
	name string

	direct atomic.Pointer[path] // the confirmed direct path; nil: relay
	// suspect is set while the direct path carries our datagrams but
	// nothing comes back: Send then copies them to the relay too, so the
	// path can die without the application's TCP backing off (WireGuard
	// drops the second copy as a replay).
	suspect atomic.Bool
	// relayIn is set when the peer's datagrams come over the relay or a
	// stream while we hold a direct path: it does not use that path, so
	// it probably cannot; probeRound treats it as silence.
	relayIn atomic.Bool

	stream atomic.Pointer[stream] // an authenticated TCP path; used when there is no direct UDP path

	mu         sync.Mutex // guards candidates, lastPing, fastLeft and the watch fields
	candidates []Candidate
	lastPing   time.Time
	fastLeft   int // fast probe rounds left before backing off
	// Watching a direct path that carries traffic: the counters at the
	// last tick, and since when we send but hear nothing.
	seenTx, seenRx uint64
	seenPong       time.Time // the direct path's last pong at the last tick
	silentSince    time.Time

	txDirect, txRelay, rxDirect, rxRelay atomic.Uint64
	txStream, rxStream                   atomic.Uint64
	changes                              atomic.Uint64                  // path changes
	oversizeAt                           atomic.Pointer[netip.AddrPort] // the last path a batch was too large for
}

type path struct {
	kind      PathKind
	addr      netip.AddrPort
	std       conn.Endpoint // carries the sticky source address
	rtt       time.Duration
	lastPong  time.Time
	confirmed time.Time
}

// Name returns the peer's name.
func (e *Endpoint) Name() string { return e.name }

// ClearSrc implements conn.Endpoint.
func (e *Endpoint) ClearSrc() {
	if d := e.direct.Load(); d != nil {
		d.std.ClearSrc()
	}
}

// SrcToString implements conn.Endpoint.
func (e *Endpoint) SrcToString() string { return "" }

// DstToString returns the direct address, or "relay".
func (e *Endpoint) DstToString() string {
	if d := e.direct.Load(); d != nil {
		return d.addr.String()
	}
	if s := e.stream.Load(); s != nil {
		return "tcp:" + s.remote.String()
	}
	return "relay:" + e.name
}

// DstToBytes implements conn.Endpoint (used for WireGuard's cookies).
func (e *Endpoint) DstToBytes() []byte {
	if d := e.direct.Load(); d != nil {
		b, _ := d.addr.MarshalBinary()
		return b
	}
	return []byte(e.name)
}

// DstIP implements conn.Endpoint.
func (e *Endpoint) DstIP() netip.Addr {
	if d := e.direct.Load(); d != nil {
		return d.addr.Addr()
	}
	return netip.Addr{}
}

// SrcIP implements conn.Endpoint.
func (e *Endpoint) SrcIP() netip.Addr { return netip.Addr{} }

// PathKind names a path.
type PathKind string

// Path kinds: how the path to a peer was made.
const (
	PathDirect   PathKind = "direct"    // the peer's own address answered (or it reached us from one)
	PathUPnP     PathKind = "upnp"      // a port mapped on the peer's gateway
	PathPunched  PathKind = "punched"   // a UDP hole punched by ICE (server- or peer-reflexive)
	PathTTCP     PathKind = "ttcp"      // Traversing-TCP: the peer's blocked SYN carried and injected
	PathTCPPunch PathKind = "tcp-punch" // TCP simultaneous open
	PathRelay    PathKind = "relay"     // through a broker
)

// Candidate is an address where a peer may answer probes, and the kind of
// path it makes.
type Candidate struct {
	Addr netip.AddrPort
	Kind PathKind
}

// PeerStatus is what `pvcd peers` shows of a peer's path.
type PeerStatus struct {
	Name        string
	Path        PathKind
	Remote      string        // the direct address, or "" on the relay
	RTT         time.Duration // of the direct path's last probe
	Changes     uint64        // path changes so far
	TxDirect    uint64        // bytes
	TxRelay     uint64
	RxDirect    uint64
	RxRelay     uint64
	Candidates  []Candidate
	ConfirmedAt time.Time
	TxStream    uint64 // bytes over a TCP path (ttcp, tcp-punch, direct TCP)
	RxStream    uint64
}

// Status returns every peer's path, sorted by name.
func (b *Bind) Status() []PeerStatus {
	b.mu.Lock()
	eps := make([]*Endpoint, 0, len(b.peers))
	for _, e := range b.peers {
		eps = append(eps, e)
	}
	b.mu.Unlock()
	out := make([]PeerStatus, 0, len(eps))
	for _, e := range eps {
		s := PeerStatus{Name: e.name, Path: PathRelay, Changes: e.changes.Load(),
			TxDirect: e.txDirect.Load(), TxRelay: e.txRelay.Load(), RxDirect: e.rxDirect.Load(), RxRelay: e.rxRelay.Load()}
		s.TxStream, s.RxStream = e.txStream.Load(), e.rxStream.Load()
		if d := e.direct.Load(); d != nil {
			s.Path, s.Remote, s.RTT, s.ConfirmedAt = d.kind, d.addr.String(), d.rtt, d.confirmed
		} else if st := e.stream.Load(); st != nil {
			s.Path, s.Remote, s.ConfirmedAt = st.kind, "tcp:"+st.remote.String(), st.since
		}
		e.mu.Lock()
		s.Candidates = append([]Candidate(nil), e.candidates...)
		e.mu.Unlock()
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

const (
	maxCandidates = 8
	fastRounds    = 25
)

// Run probes the peers' paths until ctx ends: every candidate of a peer
// without a direct path each tick (ProbeInterval/10) for fastRounds ticks
// after its candidates change, then every ProbeInterval; the direct path
// of the others every ProbeInterval. A direct path is in doubt when a
// probe goes unanswered, or when it carries our datagrams (or the peer
// sends around it) and nothing comes back for two ticks: it is then
// probed every tick and our datagrams are copied to the relay; it is
// dropped, and traffic falls back to the relay, when that lasts a second
// (silence) or six ticks (unanswered probes).
func (b *Bind) Run(ctx context.Context) {
	tick := b.cfg.ProbeInterval / 10
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b.probeRound()
	}
}

func (b *Bind) probeRound() {
	now := b.cfg.Now()
	b.mu.Lock()
	if !b.opened {
		b.mu.Unlock()
		return
	}
	for n, p := range b.nonces {
		if now.Sub(p.sent) > 3*b.cfg.ProbeInterval {
			delete(b.nonces, n)
		}
	}
	eps := make([]*Endpoint, 0, len(b.peers))
	for _, e := range b.peers {
		eps = append(eps, e)
	}
	b.mu.Unlock()
	for _, e := range eps {
		d := e.direct.Load()
		e.mu.Lock()
		silent := e.watch(d, now)
		e.mu.Unlock()
		tick := b.cfg.ProbeInterval / 10
		// A probe went unanswered (the path is probed every interval).
		unanswered := d != nil && now.Sub(d.lastPong) > b.cfg.ProbeInterval+2*tick
		sus := d != nil && (silent >= 2*tick || unanswered)
		if e.suspect.Swap(sus) != sus {
			if sus {
				b.cfg.Logger.Info("direct path in doubt: datagrams copied to the relay too", "peer", e.name, "remote", d.addr,
					"silent", silent.Round(time.Millisecond), "last pong", now.Sub(d.lastPong).Round(time.Millisecond))
				b.trouble(e.name)
			} else {
				b.cfg.Logger.Info("direct path heard again or gone: no more copies", "peer", e.name)
			}
		}
		// Dead: while we send on it, nothing at all heard for a second
		// and no pong since then (a flushed NAT mapping, a restarted
		// firewall); or an unanswered probe and none answered for 6 ticks
		// of probing every tick since.
		if d != nil && ((silent > time.Second && now.Sub(d.lastPong) > time.Second) ||
			now.Sub(d.lastPong) > b.cfg.ProbeInterval+6*tick) {
			if e.direct.CompareAndSwap(d, nil) {
				e.changes.Add(1)
				e.suspect.Store(false)
				b.cfg.Logger.Info("direct path lost: relay", "peer", e.name, "remote", d.addr, "kind", d.kind,
					"last pong", now.Sub(d.lastPong).Round(time.Millisecond), "silent", silent.Round(time.Millisecond))
				b.trouble(e.name)
			}
			d = nil
		}
		e.mu.Lock()
		var targets []netip.AddrPort
		all := func() {
			for _, c := range e.candidates {
				targets = append(targets, c.Addr)
			}
		}
		switch {
		case d == nil && e.fastLeft > 0:
			e.fastLeft--
			all()
		case d == nil && now.Sub(e.lastPing) >= b.cfg.ProbeInterval:
			all() // backed off: nothing answered
		case d != nil && (now.Sub(e.lastPing) >= b.cfg.ProbeInterval || sus || silent > 0):
			targets = append(targets, d.addr) // every tick while silent or in doubt
		}
		if len(targets) > 0 {
			e.lastPing = now
		}
		e.mu.Unlock()
		for _, a := range targets {
			b.sendProbe(e.name, a, false, 0)
		}
	}
}

// sendProbe sends a ping (a new nonce) or a pong (echoing nonce).
func (b *Bind) sendProbe(peer string, to netip.AddrPort, pong bool, nonce uint64) {
	if !pong {
		var n [8]byte
		_, _ = rand.Read(n[:])
		nonce = binary.BigEndian.Uint64(n[:])
		b.mu.Lock()
		b.nonces[nonce] = pending{peer: peer, addr: to, sent: b.cfg.Now()}
		b.mu.Unlock()
	}
	p := probe{pong: pong, nonce: nonce, from: b.cfg.Self, to: peer}
	if b.cfg.Auth != nil {
		p.sig = b.cfg.Auth.Sign(p.signedPart())
	}
	msg, err := p.marshal()
	if err != nil {
		return
	}
	ep, err := b.std.ParseEndpoint(to.String())
	if err != nil {
		return
	}
	_ = b.std.Send([][]byte{msg}, ep)
}

// handleProbe answers pings and confirms paths on pongs. A verified probe
// from an address also lets WireGuard datagrams from that address in as
// the peer's.
func (b *Bind) handleProbe(pkt []byte, from netip.AddrPort, std conn.Endpoint) {
	p, err := parseProbe(pkt)
	if err != nil || p.to != b.cfg.Self || p.from == b.cfg.Self {
		return
	}
	if b.cfg.Auth != nil && !b.cfg.Auth.Verify(p.from, p.signedPart(), p.sig) {
		return
	}
	now := b.cfg.Now()
	b.mu.Lock()
	ep := b.peerLocked(p.from)
	b.byAddr[from] = ep
	var pend pending
	var ok bool
	if p.pong {
		pend, ok = b.nonces[p.nonce]
		if ok {
			delete(b.nonces, p.nonce)
		}
	}
	b.mu.Unlock()
	if !p.pong {
		ep.mu.Lock()
		known := false
		for _, c := range ep.candidates {
			known = known || c.Addr == from
		}
		if !known && len(ep.candidates) < maxCandidates {
			// Peer-reflexive: not one of its own addresses, so the
			// address its NAT (or a punched firewall) gave it toward us.
			ep.candidates = append(ep.candidates, Candidate{Addr: from, Kind: PathPunched})
		}
		ep.mu.Unlock()
		b.sendProbe(p.from, from, true, p.nonce)
		return
	}
	if !ok || pend.peer != p.from || pend.addr != from {
		return
	}
	rtt := now.Sub(pend.sent)
	kind := ep.kindOf(from)
	for {
		cur := ep.direct.Load()
		next := &path{kind: kind, addr: from, std: std, rtt: rtt, lastPong: now, confirmed: now}
		if cur != nil {
			if cur.addr == from {
				next.confirmed = cur.confirmed
			} else if cur.rtt <= rtt && now.Sub(cur.lastPong) < b.cfg.ProbeInterval {
				return // keep the faster path that still answers
			}
		}
		if ep.direct.CompareAndSwap(cur, next) {
			if cur == nil || cur.addr != from {
				ep.changes.Add(1)
				b.cfg.Logger.Info("direct path confirmed", "peer", p.from, "remote", from, "kind", kind, "rtt", rtt)
			}
			return
		}
	}
}

// kindOf returns the kind of the candidate at addr (direct if unknown).
func (e *Endpoint) kindOf(addr netip.AddrPort) PathKind {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.candidates {
		if c.Addr == addr && c.Kind != "" {
			return c.Kind
		}
	}
	return PathDirect
}

// watch returns for how long the direct path d has carried our datagrams,
// or the peer has sent around it, while nothing came back on it (0: it is
// fine or idle). Called each tick with e.mu held.
//
// A pong on the path counts as hearing from the peer: traffic one way only
// (WireGuard's passive keepalive, a UDP stream nobody answers) brings no
// datagram back, so probeRound pings a path that has been silent for a tick
// and it is in doubt only if that ping goes unanswered too. Before, every
// passive keepalive put an idle pair in doubt, and the first datagrams of
// its next transfer were copied to the relay.
func (e *Endpoint) watch(d *path, now time.Time) time.Duration {
	tx, rx := e.txDirect.Load(), e.rxDirect.Load()
	var pong time.Time
	if d != nil {
		pong = d.lastPong
	}
	bypassed := e.relayIn.Swap(false) // the peer sends around our path
	// A peer that sends around the path while answering probes on it
	// probably has no path toward us: its pongs do not clear the doubt.
	sending, hearing := tx != e.seenTx, rx != e.seenRx || (!bypassed && pong.After(e.seenPong))
	e.seenTx, e.seenRx, e.seenPong = tx, rx, pong
	switch {
	case d == nil || hearing:
		e.silentSince = time.Time{}
	case (sending || bypassed) && e.silentSince.IsZero():
		e.silentSince = now
	}
	if e.silentSince.IsZero() {
		return 0
	}
	return now.Sub(e.silentSince)
}

// probeNow sends a ping to each candidate of the peer at once (new
// candidates need not wait for the next tick).
func (b *Bind) probeNow(e *Endpoint, addrs []netip.AddrPort) {
	b.mu.Lock()
	open := b.opened
	b.mu.Unlock()
	if !open {
		return
	}
	e.mu.Lock()
	e.lastPing = b.cfg.Now()
	e.mu.Unlock()
	for _, a := range addrs {
		b.sendProbe(e.name, a, false, 0)
	}
}

// trouble tells Config.OnTrouble (on its own goroutine).
func (b *Bind) trouble(peer string) {
	if b.cfg.OnTrouble != nil {
		go b.cfg.OnTrouble(peer)
	}
}
