// Package filter enforces PVC's security policy (security/policy) on the
// packets that cross the TUN device, statefully. A Filter wraps the TUN's
// tun.Device and is what wireguard-go's device reads and writes:
//
//	app -> kernel -> TUN -> Filter.Read  -> wireguard-go -> Bind -> peer  (outbound)
//	app <- kernel <- TUN <- Filter.Write <- wireguard-go <- Bind <- peer  (inbound)
//
// Every packet belongs to a flow: its protocol, this host's address and
// port, and the peer's address and port, so that both directions share one
// entry. The first packet of a flow is decided by the policy engine, with
// the peer's identity from Peers; the side that sent it opened the flow
// (Outbound when it comes from Read, Inbound when it comes from Write).
// An allowed flow enters the table and its later packets pass both ways
// without asking the policy again, so replies to an allowed flow come back
// even where only the other direction is allowed. A refused packet is
// removed from the batch: wireguard-go never sends it, and the kernel never
// sees it. Nothing is sent back (no ICMP error, no TCP RST): refused
// packets are dropped silently and counted.
//
// The table is bounded (Config.MaxFlows) and flows expire when idle (see
// Timeouts); Run sweeps it. SetEngine installs a new policy and
// re-evaluates every flow at once, Reevaluate does the same after the
// peers changed (a revocation), Flush forgets every flow. See
// docs/filter.md.
package filter

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pvc-project/pvc/security/policy"
	"golang.zx2c4.com/wireguard/tun"
)

// Peers tells the filter who owns a virtual IP. The daemon implements it
// over the certified peers of the cluster (all of them, not only those
// configured in wireguard-go yet, so that a first packet to a new peer is
// decided like any other).
type Peers interface {
	// PeerByIP returns the certified peer whose virtual IP is ip, with
	// its underlay address if known; false if no peer (or a revoked one)
	// holds ip. It is called for the first packet of each new flow and by
	// Reevaluate and SetEngine, while a lock of the flow table is held: it
	// must be fast, safe for concurrent use, and must not call the Filter.
	PeerByIP(ip netip.Addr) (policy.Peer, bool)
}

// Config configures a Filter. Engine and Peers are required.
type Config struct {
	Engine *policy.Engine // the policy in force; replace it with SetEngine
	Peers  Peers
	// LocalIP is this host's virtual IPv4 address. If valid, outbound
	// packets not from it and inbound packets not to it are dropped (a
	// peer cannot use this host as a router). Zero: not checked.
	LocalIP netip.Addr
	// MaxFlows bounds the flow table; zero means DefaultMaxFlows.
	MaxFlows int
	// Timeouts are the flows' idle timeouts; zero fields take defaults.
	Timeouts Timeouts
	// Logger receives at most one line a second about refused packets;
	// nil: no logging.
	Logger *slog.Logger
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time
}

// ErrConfig is returned by New for an incomplete Config.
var ErrConfig = errors.New("filter: bad config")

// Filter is a tun.Device that enforces the policy on the device it wraps.
// File, MTU, Name, Events, Close and BatchSize are the wrapped device's.
// It is safe for concurrent use as wireguard-go uses it (one reader, one
// writer per peer).
type Filter struct {
	tun.Device // the wrapped TUN

	peers      Peers
	local      [4]byte
	checkLocal bool
	log        *slog.Logger
	nowFn      func() time.Time
	base       time.Time

	pol   atomic.Pointer[policyState]
	tab   *table
	frags fragCache

	lastLog    atomic.Int64
	suppressed atomic.Uint64

	unknownPeer, malformed, ipv6, wrongAddr, fragDrop, noFlow, removed atomic.Uint64
}

// New wraps dev.
func New(dev tun.Device, cfg Config) (*Filter, error) {
	if dev == nil || cfg.Engine == nil || cfg.Peers == nil {
		return nil, ErrConfig
	}
	f := &Filter{
		Device: dev,
		peers:  cfg.Peers,
		log:    cfg.Logger,
		nowFn:  cfg.Now,
		tab:    newTable(cfg.MaxFlows, cfg.Timeouts),
	}
	if cfg.LocalIP.IsValid() {
		if !cfg.LocalIP.Is4() {
			return nil, ErrConfig
		}
		f.local, f.checkLocal = cfg.LocalIP.As4(), true
	}
	if f.nowFn == nil {
		f.nowFn = time.Now
	}
	f.base = f.nowFn()
	f.lastLog.Store(-int64(time.Hour))
	f.pol.Store(newPolicyState(cfg.Engine))
	return f, nil
}

// clock is the filter's time in nanoseconds since New (monotonic).
func (f *Filter) clock() int64 { return int64(f.nowFn().Sub(f.base)) }

// Read reads a batch from the TUN (packets this host sends) and removes
// the packets that policy refuses, moving the remaining packets' bytes
// forward so that bufs[i][offset:offset+sizes[i]], i < n, are the packets
// that pass. (The bytes move, not the slices: wireguard-go ties each
// element of bufs to its own buffer.) If every packet of a read is refused
// Read reads again, so it returns 0 packets only with an error.
func (f *Filter) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		n, err := f.Device.Read(bufs, sizes, offset)
		if n == 0 {
			return 0, err
		}
		now := f.clock()
		var acc accum
		k := 0
		for i := 0; i < n; i++ {
			pkt := bufs[i][offset : offset+sizes[i]]
			if !f.check(pkt, policy.Outbound, now, &acc) {
				continue
			}
			if k != i {
				if copy(bufs[k][offset:], pkt) < len(pkt) {
					continue // unequal buffers: cannot happen with wireguard-go
				}
				sizes[k] = sizes[i]
			}
			k++
		}
		acc.flush()
		if k > 0 || err != nil {
			return k, err
		}
	}
}

// Write writes a batch of packets from peers to the TUN, without those
// that policy refuses. bufs[i][offset:] is a packet; the offset bytes
// before it are headroom the wrapped device may use (virtio header). To
// drop packets Write permutes the elements of bufs (never their bytes), so
// that the allowed ones come first, in order. It returns len(bufs) when
// the wrapped device wrote the allowed packets (refused ones count as
// consumed), else the wrapped device's count and error.
func (f *Filter) Write(bufs [][]byte, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	now := f.clock()
	var acc accum
	k := 0
	for i := range bufs {
		if !f.check(bufs[i][offset:], policy.Inbound, now, &acc) {
			continue
		}
		if k != i {
			bufs[k], bufs[i] = bufs[i], bufs[k]
		}
		k++
	}
	acc.flush()
	if k == 0 {
		return len(bufs), nil
	}
	n, err := f.Device.Write(bufs[:k], offset)
	if err != nil {
		return n, err
	}
	return len(bufs), nil
}

// check decides one packet sent by side dir (Outbound: this host) and
// records it. It reports whether the packet passes.
func (f *Filter) check(b []byte, dir policy.Direction, now int64, acc *accum) bool {
	var p packet
	switch parse(b, &p) {
	case kindIPv6:
		f.ipv6.Add(1)
		return false
	case kindMalformed:
		f.malformed.Add(1)
		return false
	}
	local, remote, lport, rport := p.src, p.dst, p.sport, p.dport
	if dir == policy.Inbound {
		local, remote, lport, rport = p.dst, p.src, p.dport, p.sport
	}
	if f.checkLocal && local != f.local {
		f.wrongAddr.Add(1)
		return false
	}
	if p.frag == fragLater {
		rc := f.frags.lookup(&p.tuple, p.ipID, now)
		if rc == nil {
			f.fragDrop.Add(1)
			return false
		}
		acc.add(rc, len(b))
		return true
	}
	if p.related && f.passRelated(&p, dir, remote, len(b), acc) {
		return true
	}
	k := makeKey(p.proto, local, remote, lport, rport)
	if acc.sh != nil {
		if acc.key == k && touch(acc.e, dir, p.flags, now) {
			acc.add(acc.e.rc, len(b))
			if p.frag == fragFirst {
				f.frags.remember(&p.tuple, p.ipID, acc.e.rc, now)
			}
			return true
		}
		acc.release()
	}
	sh := f.tab.shard(k)
	sh.mu.RLock()
	if e := sh.m[k]; e != nil && touch(e, dir, p.flags, now) {
		rc, denied := e.rc, e.denied
		if denied {
			sh.mu.RUnlock()
			rc.packets.Add(1)
			rc.bytes.Add(uint64(len(b)))
			return false
		}
		acc.hold(sh, k, e)
		acc.add(rc, len(b))
		if p.frag == fragFirst {
			f.frags.remember(&p.tuple, p.ipID, rc, now)
		}
		return true
	}
	sh.mu.RUnlock()
	if p.proto == protoTCP && p.flags&(tcpSYN|tcpACK|tcpRST|tcpFIN) != tcpSYN {
		f.noFlow.Add(1) // a TCP flow begins with a SYN
		return false
	}
	rc, ok := f.newFlow(sh, k, dir, p.flags, now, len(b))
	if ok {
		acc.add(rc, len(b))
		if p.frag == fragFirst {
			f.frags.remember(&p.tuple, p.ipID, rc, now)
		}
	}
	return ok
}

// passRelated lets an ICMP error through if it quotes a packet of a flow
// in the table with the same peer (the quoted packet went the other way:
// its sender is the error's receiver).
func (f *Filter) passRelated(p *packet, dir policy.Direction, remote [4]byte, n int, acc *accum) bool {
	acc.release()
	q := &p.inner
	local, qremote, lport, rport := q.dst, q.src, q.dport, q.sport // we received the quoted packet
	if dir == policy.Inbound {
		local, qremote, lport, rport = q.src, q.dst, q.sport, q.dport // we sent it
	}
	if qremote != remote || (f.checkLocal && local != f.local) {
		return false
	}
	k := makeKey(q.proto, local, qremote, lport, rport)
	sh := f.tab.shard(k)
	sh.mu.RLock()
	e := sh.m[k]
	var rc *ruleCounter
	if e != nil && !e.denied {
		rc = e.rc
	}
	sh.mu.RUnlock()
	if rc == nil {
		return false
	}
	acc.add(rc, n)
	return true
}

// newFlow decides the first packet of flow k under the shard's write lock,
// so that SetEngine and Reevaluate, which take every shard's lock after
// installing their change, cannot miss a flow decided under the old
// policy or peers.
func (f *Filter) newFlow(sh *shard, k flowKey, dir policy.Direction, flags uint8, now int64, n int) (*ruleCounter, bool) {
	sh.mu.Lock()
	if e := sh.m[k]; e != nil {
		if touch(e, dir, flags, now) { // another goroutine added it
			rc, denied := e.rc, e.denied
			sh.mu.Unlock()
			if denied {
				rc.packets.Add(1)
				rc.bytes.Add(uint64(n))
				return nil, false
			}
			return rc, true
		}
		f.tab.removeLocked(sh, e) // a SYN reopens a closing flow: decide afresh
	}
	ps := f.pol.Load()
	remote := netip.AddrFrom4(k.remote())
	peer, ok := f.peers.PeerByIP(remote)
	if !ok {
		sh.mu.Unlock()
		f.unknownPeer.Add(1)
		return nil, false
	}
	fl := policy.Flow{
		Proto:      policy.Proto(k.proto()),
		Dir:        dir,
		LocalIP:    netip.AddrFrom4(k.local()),
		RemoteIP:   remote,
		LocalPort:  k.lport(),
		RemotePort: k.rport(),
	}
	if fl.Proto == policy.ProtoICMP {
		fl.LocalPort, fl.RemotePort = 0, 0 // the echo identifier is no port
	}
	d := ps.eng.Decide(&fl, &peer)
	rc := ps.counter(d)
	if !d.Allow {
		sh.mu.Unlock()
		rc.flows.Add(1)
		rc.packets.Add(1)
		rc.bytes.Add(uint64(n))
		f.logDenied(ps, &fl, peer.Name, d)
		return nil, false
	}
	e := f.tab.insertLocked(sh, k, dir, rc, now)
	touch(e, dir, flags, now)
	sh.mu.Unlock()
	rc.flows.Add(1)
	return rc, true
}

// logDenied logs a refused packet, at most once a second.
func (f *Filter) logDenied(ps *policyState, fl *policy.Flow, peer string, d policy.Decision) {
	if f.log == nil {
		return
	}
	now := f.clock()
	last := f.lastLog.Load()
	if now-last < int64(time.Second) || !f.lastLog.CompareAndSwap(last, now) {
		f.suppressed.Add(1)
		return
	}
	f.log.Info("filter: packet refused",
		"dir", fl.Dir.String(), "proto", fl.Proto.String(), "peer", peer,
		"local", netip.AddrPortFrom(fl.LocalIP, fl.LocalPort).String(),
		"remote", netip.AddrPortFrom(fl.RemoteIP, fl.RemotePort).String(),
		"why", ps.eng.Explain(d), "suppressed", f.suppressed.Swap(0))
}

// SetEngine installs a new policy and re-evaluates every flow in the table
// with it before returning (see Reevaluate). The rule counters start
// again. It returns the number of flows stopped.
func (f *Filter) SetEngine(e *policy.Engine) int {
	if e == nil {
		panic("filter: SetEngine(nil)")
	}
	f.pol.Store(newPolicyState(e))
	return f.Reevaluate()
}

// Reevaluate decides every flow in the table again, with the engine in
// force and the peers as Peers now returns them: call it when a peer is
// revoked or its certificate changed. Flows with no peer any more are
// removed (their packets then have no peer either). Flows that the policy
// now refuses stay in the table as refused: their packets are dropped in
// both directions until the flow has been idle for its timeout (or, for
// TCP, a new SYN opens it again and is decided afresh). Keeping them is
// what stops a refused flow for good: were it removed, this host's next
// packet of it would open a new outbound flow that lets the peer's packets
// back in as replies. It returns the number of flows stopped.
func (f *Filter) Reevaluate() int {
	ps := f.pol.Load()
	denied := 0
	n := f.tab.each(func(e *entry) bool {
		remote := netip.AddrFrom4(e.key.remote())
		peer, ok := f.peers.PeerByIP(remote)
		if !ok {
			return false
		}
		fl := policy.Flow{
			Proto: policy.Proto(e.key.proto()), Dir: e.dir,
			LocalIP: netip.AddrFrom4(e.key.local()), RemoteIP: remote,
			LocalPort: e.key.lport(), RemotePort: e.key.rport(),
		}
		if fl.Proto == policy.ProtoICMP {
			fl.LocalPort, fl.RemotePort = 0, 0
		}
		d := ps.eng.Decide(&fl, &peer)
		if !e.denied && !d.Allow {
			denied++
		}
		e.rc, e.denied = ps.counter(d), !d.Allow
		if e.denied {
			e.state.Store(tcpClosing) // a new SYN decides afresh
		}
		return true
	})
	f.frags.clear()
	f.removed.Add(uint64(n))
	return n + denied
}

// Flush forgets every flow. TCP connections stop for good (a TCP flow
// begins with a SYN); the next UDP or ICMP packet of a forgotten flow is
// decided as a new flow opened by its sender, so a reply may be refused
// where the request was allowed. Prefer Reevaluate, which keeps the flows
// that are still allowed. It returns how many flows were removed.
func (f *Filter) Flush() int {
	n := f.tab.each(func(*entry) bool { return false })
	f.frags.clear()
	f.removed.Add(uint64(n))
	return n
}

// Sweep removes the flows that have been idle longer than their timeout
// and returns how many. Run calls it periodically; a full table also
// sweeps the shard that needs room.
func (f *Filter) Sweep() int { return f.tab.sweep(f.clock()) }

// SweepInterval is how often Run sweeps the table.
const SweepInterval = 10 * time.Second

// Run sweeps the table every SweepInterval until ctx is done, then
// returns nil. The daemon runs it beside the wireguard-go device.
func (f *Filter) Run(ctx context.Context) error {
	t := time.NewTicker(SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			f.Sweep()
		}
	}
}

// Len returns the number of flows in the table.
func (f *Filter) Len() int { return f.tab.len() }

// Stats returns a snapshot of the counters.
func (f *Filter) Stats() Stats {
	return Stats{
		Flows:        f.tab.len(),
		Rules:        f.pol.Load().snapshot(),
		UnknownPeer:  f.unknownPeer.Load(),
		Malformed:    f.malformed.Load(),
		IPv6:         f.ipv6.Load(),
		WrongAddress: f.wrongAddr.Load(),
		Fragments:    f.fragDrop.Load(),
		NoFlow:       f.noFlow.Load(),
		Evicted:      f.tab.evicted.Load(),
		Expired:      f.tab.expired.Load(),
		Removed:      f.removed.Load(),
	}
}

// fragCache remembers the first fragments that passed, so that the later
// fragments of the same datagrams (which carry no ports) pass too. It is
// direct-mapped: a datagram whose slot was reused before its later
// fragments arrived loses them (and the kernel drops the datagram).
type fragCache struct {
	mu    sync.Mutex
	slots [256]fragSlot // guarded by mu
}

type fragSlot struct {
	src, dst [4]byte
	proto    uint8
	id       uint16
	expires  int64
	rc       *ruleCounter
}

// fragLife is how long the later fragments of a datagram may trail its
// first one.
const fragLife = int64(5 * time.Second)

func fragIndex(t *tuple, id uint16) int {
	return int(mix(uint64(be32(t.src))<<32|uint64(be32(t.dst))^uint64(id)<<8^uint64(t.proto)) & 255)
}

func (c *fragCache) remember(t *tuple, id uint16, rc *ruleCounter, now int64) {
	c.mu.Lock()
	c.slots[fragIndex(t, id)] = fragSlot{src: t.src, dst: t.dst, proto: t.proto, id: id, expires: now + fragLife, rc: rc}
	c.mu.Unlock()
}

func (c *fragCache) lookup(t *tuple, id uint16, now int64) *ruleCounter {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.slots[fragIndex(t, id)]
	if s.rc == nil || s.src != t.src || s.dst != t.dst || s.proto != t.proto || s.id != id || now > s.expires {
		return nil
	}
	return s.rc
}

func (c *fragCache) clear() {
	c.mu.Lock()
	c.slots = [256]fragSlot{}
	c.mu.Unlock()
}
