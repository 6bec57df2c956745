package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/endpoint"
	"github.com/pvc-project/pvc/security/policy"
	"github.com/pvc-project/pvc/vnet/bind"
	vice "github.com/pvc-project/pvc/vnet/ice"
	"github.com/pvc-project/pvc/vnet/overlay"
	"github.com/pvc-project/pvc/vnet/tcppunch"
	"github.com/pvc-project/pvc/vnet/ttcp"
	"github.com/pvc-project/pvc/vnet/upnp"
	"golang.org/x/sys/unix"
)

// Technique names for --paths. Direct UDP to a peer's host address and the
// broker relay are always on.
const (
	TechUPnP     = "upnp"      // map our port on the site's gateway
	TechICE      = "ice"       // UDP hole punching
	TechTCP      = "tcp"       // a plain TCP connection to a peer that accepts one
	TechTTCP     = "ttcp"      // Traversing-TCP
	TechTCPPunch = "tcp-punch" // TCP simultaneous open
)

// AllTechniques lists the techniques in the order they are tried.
var AllTechniques = []string{TechUPnP, TechICE, TechTCP, TechTTCP, TechTCPPunch}

// Techniques is the set of techniques a host may use.
type Techniques map[string]bool

// ParseTechniques parses a comma-separated list ("all" or "" for all,
// "none" for none).
func ParseTechniques(s string) (Techniques, error) {
	t := Techniques{}
	s = strings.TrimSpace(s)
	switch s {
	case "", "all":
		for _, n := range AllTechniques {
			t[n] = true
		}
		return t, nil
	case "none":
		return t, nil
	}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		known := false
		for _, n := range AllTechniques {
			known = known || n == f
		}
		if !known {
			return nil, fmt.Errorf("unknown technique %q (known: %s, all, none)", f, strings.Join(AllTechniques, ", "))
		}
		t[f] = true
	}
	return t, nil
}

func (t Techniques) String() string {
	var out []string
	for _, n := range AllTechniques {
		if t[n] {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ",")
}

// pathManager runs the traversal techniques toward the peers traffic flows
// with: the Bind probes the peer's host addresses and UPnP mapping itself;
// ICE punches UDP holes; when no UDP path is confirmed shortly after the
// peer became active, the TCP techniques are tried; the relay carries
// traffic meanwhile. Peers without a direct UDP path are retried every
// retryEvery, so a path that died (NAT mapping flushed) comes back.
type pathManager struct {
	d       *daemon
	o       *overlay.Overlay
	tech    Techniques
	ice     *vice.Agents // nil: ICE off
	tcp     net.Listener // nil: TCP off
	ttcp    *ttcp.Server // nil: Traversing-TCP off (or no privilege)
	tcpWhy  string       // why the TCP techniques are off, for every peer
	ttcpOff string       // why Traversing-TCP is off

	upnpExt atomic.Pointer[netip.AddrPort] // our mapped endpoint, while mapped
	upnpWhy atomic.Pointer[string]

	mu      sync.Mutex
	why     map[string]map[string]string // peer → technique → why it failed
	tcpBusy map[string]bool
	tcpLast map[string]time.Time // last TCP attempt toward a peer
	expect  map[netip.AddrPort]expected
	queues  [ttcpQueues]bool // NFQUEUE numbers in use by Traversing-TCP dials
	inject  map[string]*tokens
	// injected is when we last injected a peer's SYN description.
	injected map[string]time.Time
	// brokerSince is when a broker session was first seen up.
	brokerSince time.Time
}

// expectLocked records a connection we wait for, and forgets the ones
// whose time is over. m.mu is held.
func (m *pathManager) expectLocked(from netip.AddrPort, e expected) {
	now := time.Now()
	for k, old := range m.expect {
		if now.After(old.until) {
			delete(m.expect, k)
		}
	}
	m.expect[from] = e
}

// injectedLately reports whether a Traversing-TCP dial of the peer is
// probably under way: we injected its SYN less than 5 s ago (a dial's
// bound).
func (m *pathManager) injectedLately(peer string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return time.Since(m.injected[peer]) < 5*time.Second
}

// udpBlocked reports whether our UDP seems blocked: a broker session has
// been up for udpGrace and more, and no broker confirmed our UDP.
func (m *pathManager) udpBlocked() bool {
	if m.d.client.RelayOverUDP() {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.d.client.Connected()) == 0 {
		m.brokerSince = time.Time{}
		return false
	}
	if m.brokerSince.IsZero() {
		m.brokerSince = time.Now()
	}
	return time.Since(m.brokerSince) > 2*udpGrace
}

// tokens is a small token bucket (injections of one peer's SYNs).
type tokens struct {
	n    float64
	last time.Time
}

func (m *pathManager) allowInject(peer string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	t := m.inject[peer]
	if t == nil {
		t = &tokens{n: injectBurst, last: now}
		m.inject[peer] = t
	}
	t.n = min(injectBurst, t.n+now.Sub(t.last).Seconds()/injectEvery.Seconds())
	t.last = now
	if t.n < 1 {
		return false
	}
	t.n--
	return true
}

// Traversing-TCP dials capture their SYN on NFQUEUE numbers
// ttcp.DefaultQueue and up, one per dial in progress.
const ttcpQueues = 16

func (m *pathManager) takeQueue() (uint16, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, used := range m.queues {
		if !used {
			m.queues[i] = true
			return ttcp.DefaultQueue + uint16(i), true
		}
	}
	return 0, false
}

func (m *pathManager) giveQueue(q uint16) {
	m.mu.Lock()
	m.queues[q-ttcp.DefaultQueue] = false
	m.mu.Unlock()
}

// expected is a TCP connection we wait for on the listener: from a client
// whose SYN we injected (ttcp), or from a peer punching (tcp-punch).
type expected struct {
	peer  string
	kind  bind.PathKind
	until time.Time
}

const (
	udpGrace   = 1500 * time.Millisecond // a UDP path usually confirms within this
	retryEvery = time.Second             // peers on the relay are looked at this often (ICE keeps its own backoff)
	tcpEvery   = 10 * time.Second        // TCP techniques toward a peer at most this often
	plainWait  = 300 * time.Millisecond  // for a plain TCP connection before Traversing-TCP
	ttcpTurn   = 1500 * time.Millisecond // the peer with the larger name dials Traversing-TCP this much later
	// injectBurst SYN descriptions of one peer are injected at once, then
	// one per injectEvery: a peer cannot make us send SYN/ACKs at will.
	injectBurst = 4
	injectEvery = 2 * time.Second
)

func newPathManager(d *daemon, o *overlay.Overlay, tech Techniques) *pathManager {
	return &pathManager{d: d, o: o, tech: tech, why: map[string]map[string]string{}, tcpBusy: map[string]bool{}, tcpLast: map[string]time.Time{},
		expect: map[netip.AddrPort]expected{}, inject: map[string]*tokens{}, injected: map[string]time.Time{}}
}

// start opens what the techniques need: ICE's agents on the shared socket
// (with the brokers' STUN), the TCP listener on WireGuard's port number.
func (m *pathManager) start(ctx context.Context, run func(func())) error {
	port := m.o.Port()
	if m.tech[TechICE] {
		var stuns []netip.AddrPort
		for _, b := range m.d.bundle.Brokers {
			if ap, err := netip.ParseAddrPort(b.Addr); err == nil {
				stuns = append(stuns, ap)
			} else if ua, err := net.ResolveUDPAddr("udp4", b.Addr); err == nil {
				stuns = append(stuns, ua.AddrPort())
			}
		}
		subnet := m.d.bundle.Subnet
		a, err := vice.New(vice.Config{Self: m.d.cert.Name, Port: port, STUN: stuns,
			Send: m.o.Bind().SendTo,
			Signal: func(ctx context.Context, to string, msg []byte) error {
				return m.d.client.Signal(ctx, to, proto.SignalICE, msg)
			},
			OnPath: func(peer string, remote netip.AddrPort, kind bind.PathKind) {
				m.o.Bind().AddCandidate(peer, bind.Candidate{Addr: remote, Kind: kind})
			},
			Exclude: func(a netip.Addr) bool { return subnet.Contains(a) },
			Logger:  m.d.log.With("part", "ice")})
		if err != nil {
			return err
		}
		m.ice = a
	}
	if m.tech[TechTCP] || m.tech[TechTTCP] || m.tech[TechTCPPunch] {
		// One listener for every TCP technique, on WireGuard's port
		// number; tcp-punch binds the same port (SO_REUSEPORT).
		lc := net.ListenConfig{Control: reusePort}
		ln, err := lc.Listen(ctx, "tcp4", fmt.Sprintf(":%d", port))
		if err != nil {
			m.tcpWhy = "no TCP listener on port " + fmt.Sprint(port) + ": " + shortErr(err)
			m.d.log.Warn("TCP techniques off: no listener", "port", port, "err", err)
		} else {
			m.tcp = ln
			run(func() { m.acceptTCP(ctx) })
		}
	}
	if m.tcp != nil && m.tech[TechTTCP] {
		if err := m.startTTCP(); err != nil {
			m.d.log.Info("Traversing-TCP off", "why", err)
			m.tech[TechTTCP] = false
			m.ttcpOff = err.Error()
		}
	}

	if m.tech[TechUPnP] && m.d.local != nil && m.d.local.UPnP == policy.Deny {
		m.tech[TechUPnP] = false
		m.d.log.Info("UPnP off: the local policy denies it")
	}
	if m.tech[TechUPnP] {
		mp := upnp.New(upnp.Config{Cluster: m.d.bundle.Cluster, Peer: m.d.cert.Name, Port: port,
			Logger: m.d.log.With("part", "upnp"),
			OnStatus: func(s upnp.Status) {
				if s.State == upnp.StateMapped {
					ext := s.External
					m.upnpExt.Store(&ext)
				} else {
					m.upnpExt.Store(nil)
				}
				why := s.Why()
				m.upnpWhy.Store(&why)
			}})
		run(func() { _ = mp.Run(ctx) })
	}
	run(func() { m.loop(ctx) })
	m.udpBlocked() // start the clock
	return nil
}

func (m *pathManager) close() {
	if m.ice != nil {
		_ = m.ice.Close()
	}
	if m.tcp != nil {
		_ = m.tcp.Close()
	}
	if m.ttcp != nil {
		_ = m.ttcp.Close()
	}
}

// startTTCP makes the Traversing-TCP server, after removing the rules an
// earlier run killed with SIGKILL left behind.
func (m *pathManager) startTTCP() error {
	if err := ttcp.Available(); err != nil {
		return err
	}
	if n, err := ttcp.RemoveStale(""); err != nil {
		return err
	} else if n > 0 {
		m.d.log.Info("Traversing-TCP: rules of an earlier run removed", "rules", n)
	}
	srv, err := ttcp.NewServer(ttcp.ServerConfig{Addr: netip.PrefixFrom(m.d.cert.IP, 32), OpenTTL: ttcpOpenTTL})
	if err != nil {
		return err
	}
	m.ttcp = srv
	return nil
}

// ttcpOpenTTL is the TTL of the SYN a Traversing-TCP server sends first to
// open its own router's state (docs/traversal.md): it leaves one router
// and dies before the client's.
const ttcpOpenTTL = 2

func reusePort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		for _, o := range []int{unix.SO_REUSEADDR, unix.SO_REUSEPORT} {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o, 1); serr != nil {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// input takes the non-WireGuard packets of the shared socket (STUN).
func (m *pathManager) input(pkt []byte, from netip.AddrPort) {
	if m != nil && m.ice != nil {
		m.ice.Input(pkt, from)
	}
}

// signal handles a peer's signalling message for a technique.
func (m *pathManager) signal(s client.Signal) {
	switch s.Kind {
	case proto.SignalICE:
		if m.ice == nil {
			return
		}
		if err := m.ice.Handle(s.From, s.Payload); err != nil {
			m.d.log.Info("ice message", "peer", s.From, "err", err)
		}
	case proto.SignalTTCPSYN:
		if err := m.injectSYN(s.From, s.Payload); err != nil {
			m.d.log.Info("Traversing-TCP: SYN not injected", "peer", s.From, "err", err)
			m.setWhy(s.From, TechTTCP, "as server: "+err.Error())
		}
	case proto.SignalOffer:
		if len(s.Payload) == 1 && s.Payload[0] == offerTCPPunch && m.tech[TechTCPPunch] && m.tcp != nil {
			go m.punch(s.From, false)
		}
	}
}

// offerTCPPunch is the payload of a SignalOffer that asks the peer to
// punch a TCP connection with us now.
const offerTCPPunch = 1

// active is called when traffic starts to flow with a peer.
func (m *pathManager) active(peer string) { m.attempt(peer) }

// removed forgets a peer (revoked or gone).
func (m *pathManager) removed(peer string) {
	if m.ice != nil {
		m.ice.Stop(peer)
	}
	m.mu.Lock()
	delete(m.why, peer)
	delete(m.tcpLast, peer)
	delete(m.inject, peer)
	delete(m.injected, peer)
	m.mu.Unlock()
}

func (m *pathManager) loop(ctx context.Context) {
	t := time.NewTicker(retryEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.udpBlocked() // keeps its clock
		for _, p := range m.o.ActivePeers() {
			if !m.o.Bind().HasDirect(p) {
				m.attempt(p)
			}
		}
	}
}

// attempt runs the techniques toward a peer that has no direct UDP path.
func (m *pathManager) attempt(peer string) {
	b := m.o.Bind()
	if b.HasDirect(peer) {
		return
	}
	// Our own UDP is blocked when no broker confirmed our UDP relay path
	// in the seconds since we reached one: ICE is pointless then, and the
	// TCP techniques start at once.
	blocked := m.udpBlocked()
	if m.ice != nil && !blocked {
		m.ice.Connect(peer)
	}
	if b.HasStream(peer) || m.tcp == nil {
		return
	}
	m.mu.Lock()
	if m.tcpBusy[peer] || time.Since(m.tcpLast[peer]) < tcpEvery {
		m.mu.Unlock()
		return
	}
	m.tcpBusy[peer] = true
	m.tcpLast[peer] = time.Now()
	m.mu.Unlock()
	go func() {
		defer func() { m.mu.Lock(); delete(m.tcpBusy, peer); m.mu.Unlock() }()
		if !blocked {
			time.Sleep(udpGrace)
		}
		if b.HasDirect(peer) || b.HasStream(peer) {
			return
		}
		m.tcpTechniques(peer)
	}()
}

// tcpTechniques runs the TCP techniques toward a peer that has no UDP
// path, best first: a plain connection to its own address; Traversing-TCP
// as client (the peer with the smaller name first, the other 2.5 s later,
// so that each side serves once); TCP simultaneous open.
func (m *pathManager) tcpTechniques(peer string) {
	b := m.o.Bind()
	done := func() bool { return b.HasDirect(peer) || b.HasStream(peer) }
	if m.d.client.View().Endpoints(peer) == nil {
		// Its endpoint record has not reached us yet: try again soon.
		m.setWhy(peer, TechTCP, "no endpoint record yet")
		m.mu.Lock()
		delete(m.tcpLast, peer)
		m.mu.Unlock()
		return
	}
	if m.tech[TechTCP] {
		// A plain connection, ours or the peer's, takes one round trip
		// where it works at all; where a firewall drops it, ours would
		// wait for its timeout: give it plainWait, then go on.
		// Ours may fail at once (an unreachable LAN address) while the
		// peer's is under way: wait plainWait either way.
		t0 := time.Now()
		dialed := make(chan struct{})
		go func() { defer close(dialed); m.dialTCP(peer) }()
		select {
		case <-dialed:
		case <-time.After(plainWait):
		}
		if rest := plainWait - time.Since(t0); rest > 0 && !done() {
			time.Sleep(rest)
		}
		if done() {
			return
		}
	}
	if m.tech[TechTTCP] {
		if m.d.cert.Name > peer {
			time.Sleep(ttcpTurn) // the peer dials first
			// While its dial is under way (we injected its SYN lately),
			// a dial of ours would race it: two streams, each side
			// keeping a different one. Wait for it to end.
			for i := 0; i < 50 && !done() && m.injectedLately(peer); i++ {
				time.Sleep(100 * time.Millisecond)
			}
			if done() {
				return
			}
		}
		m.dialTTCP(peer)
		if done() {
			return
		}
	}
	if m.tech[TechTCPPunch] {
		m.punch(peer, true)
	}
}

// peerPublic returns where a peer's public TCP endpoint is: its observed
// public address (a port-preserving NAT keeps its port), else its own.
func (m *pathManager) peerPublic(peer string) (netip.AddrPort, bool) {
	r := m.d.client.View().Endpoints(peer)
	if r == nil {
		return netip.AddrPort{}, false
	}
	return public(r.Endpoints)
}

// public picks from an endpoint record the public endpoint: the observed
// one, else the UPnP mapping (the record lists an address once, and a
// mapping on a port-keeping NAT is the observed address too), else the
// host's own address.
func public(eps []endpoint.Endpoint) (netip.AddrPort, bool) {
	best, rank := netip.AddrPort{}, 0
	for _, e := range eps {
		r := map[endpoint.Kind]int{endpoint.Observed: 3, endpoint.UPnP: 2, endpoint.Host: 1}[e.Kind]
		if r > rank {
			best, rank = e.Addr, r
		}
	}
	return best, rank > 0
}

// localAddr is this host's own address for TCP (the first of its
// endpoints), with our port.
func (m *pathManager) localAddr() (netip.AddrPort, bool) {
	for _, e := range m.d.endpoints(m.o.Port()) {
		if e.Kind == endpoint.Host {
			return e.Addr, true
		}
	}
	return netip.AddrPort{}, false
}

// ourPublic is the public address the brokers observe for us.
func (m *pathManager) ourPublic() netip.Addr {
	ap, _ := public(m.d.endpoints(m.o.Port()))
	return ap.Addr()
}

// dialTTCP connects to the peer with Traversing-TCP: our SYN's
// description goes to the peer through the brokers, the peer injects it.
func (m *pathManager) dialTTCP(peer string) {
	remote, ok := m.peerPublic(peer)
	if !ok {
		m.setWhy(peer, TechTTCP, "no endpoint record")
		return
	}
	q, ok := m.takeQueue()
	if !ok {
		m.setWhy(peer, TechTTCP, "every NFQUEUE number in use")
		return
	}
	defer m.giveQueue(q)
	d := &ttcp.Dialer{Public: m.ourPublic(), Queue: q, Queues: 1, Logger: m.d.log.With("part", "ttcp")}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.Dial(ctx, remote, func(ctx context.Context, syn ttcp.SYN) error {
		b, err := syn.Marshal()
		if err != nil {
			return err
		}
		return m.d.client.Signal(ctx, peer, proto.SignalTTCPSYN, b)
	})
	if err != nil {
		m.setWhy(peer, TechTTCP, shortErr(err))
		return
	}
	if _, err := m.o.Bind().AddStream(c, bind.PathTTCP, peer); err != nil {
		m.setWhy(peer, TechTTCP, err.Error())
		return
	}
	m.d.log.Info("TCP path", "peer", peer, "kind", bind.PathTTCP, "remote", remote)
	m.setWhy(peer, TechTTCP, "")
}

// injectSYN serves a peer's Traversing-TCP dial: its described SYN is
// injected into our stack, which answers from our listener's port. The
// description must come from one of the peer's own published addresses
// and be aimed at our port: we never answer on a third party's behalf.
func (m *pathManager) injectSYN(peer string, payload []byte) error {
	if m.ttcp == nil {
		if m.ttcpOff != "" {
			return fmt.Errorf("off here: %s", m.ttcpOff)
		}
		return fmt.Errorf("off here")
	}
	syn, err := ttcp.ParseSYN(payload)
	if err != nil {
		return err
	}
	if !m.allowInject(peer) {
		return fmt.Errorf("more than %d SYN descriptions in %v", injectBurst, injectBurst*injectEvery)
	}
	if syn.Dst.Port() != m.o.Port() {
		return fmt.Errorf("SYN for port %d, ours is %d", syn.Dst.Port(), m.o.Port())
	}
	r := m.d.client.View().Endpoints(peer)
	known := false
	if r != nil {
		for _, e := range r.Endpoints {
			known = known || e.Addr.Addr() == syn.Src.Addr()
		}
	}
	if !known {
		return fmt.Errorf("SYN from %v, not an address %s published", syn.Src, peer)
	}
	local, ok := m.localAddr()
	if !ok {
		return fmt.Errorf("no local address")
	}
	m.mu.Lock()
	m.expectLocked(syn.Src, expected{peer: peer, kind: bind.PathTTCP, until: time.Now().Add(10 * time.Second)})
	m.injected[peer] = time.Now()
	m.mu.Unlock()
	return m.ttcp.Inject(syn, local)
}

// punch runs TCP simultaneous open with the peer for a few seconds; the
// side that starts asks the other to punch too.
func (m *pathManager) punch(peer string, start bool) {
	remote, ok := m.peerPublic(peer)
	local, ok2 := m.localAddr()
	if !ok || !ok2 {
		m.setWhy(peer, TechTCPPunch, "no endpoint record")
		return
	}
	if start {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := m.d.client.Signal(ctx, peer, proto.SignalOffer, []byte{offerTCPPunch})
		cancel()
		if err != nil {
			m.setWhy(peer, TechTCPPunch, "offer: "+shortErr(err))
			return
		}
	}
	m.mu.Lock()
	m.expectLocked(remote, expected{peer: peer, kind: bind.PathTCPPunch, until: time.Now().Add(10 * time.Second)})
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := tcppunch.Punch(ctx, local, remote)
	if err != nil {
		if !m.o.Bind().HasStream(peer) {
			m.setWhy(peer, TechTCPPunch, shortErr(err))
		}
		return
	}
	if _, err := m.o.Bind().AddStream(c, bind.PathTCPPunch, peer); err != nil {
		m.setWhy(peer, TechTCPPunch, err.Error())
		return
	}
	m.d.log.Info("TCP path", "peer", peer, "kind", bind.PathTCPPunch, "remote", remote)
	m.setWhy(peer, TechTCPPunch, "")
}

// dialTCP tries a plain TCP connection to each of the peer's host
// addresses (a peer on a public address or behind a UPnP mapping accepts
// them; a firewall drops them).
func (m *pathManager) dialTCP(peer string) {
	r := m.d.client.View().Endpoints(peer)
	if r == nil {
		m.setWhy(peer, TechTCP, "no endpoint record")
		return
	}
	var errs []string
	for _, e := range r.Endpoints {
		if e.Kind != endpoint.Host && e.Kind != endpoint.UPnP {
			continue
		}
		c, err := net.DialTimeout("tcp4", e.Addr.String(), time.Second)
		if err != nil {
			errs = append(errs, shortErr(err))
			continue
		}
		kind := bind.PathDirect
		if e.Kind == endpoint.UPnP {
			kind = bind.PathUPnP
		}
		if _, err := m.o.Bind().AddStream(c, kind, peer); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		m.d.log.Info("TCP path", "peer", peer, "remote", e.Addr)
		m.setWhy(peer, TechTCP, "")
		return
	}
	m.setWhy(peer, TechTCP, strings.Join(errs, "; "))
}

func (m *pathManager) acceptTCP(ctx context.Context) {
	for {
		c, err := m.tcp.Accept()
		if err != nil {
			return
		}
		go func() {
			kind := bind.PathDirect
			if ra, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
				ra = netip.AddrPortFrom(ra.Addr().Unmap(), ra.Port())
				m.mu.Lock()
				if e, ok := m.expect[ra]; ok && time.Now().Before(e.until) {
					kind = e.kind
				}
				m.mu.Unlock()
			}
			peer, err := m.o.Bind().AddStream(c, kind, "")
			if err != nil {
				m.d.log.Info("TCP path refused", "from", c.RemoteAddr(), "err", err)
				return
			}
			if !m.d.knownPeer(peer) {
				m.o.Bind().RemovePeer(peer) // proved a key we do not know: not a peer
				return
			}
			m.d.log.Info("TCP path", "peer", peer, "kind", kind, "from", c.RemoteAddr())
		}()
	}
}

// shortErr returns the innermost part of an error's text (after its last
// ": "), without the closing parentheses of the outer parts.
func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	for strings.Count(s, ")") > strings.Count(s, "(") {
		s = strings.TrimSuffix(s, ")")
	}
	return s
}

func (m *pathManager) setWhy(peer, tech, why string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.why[peer]
	if w == nil {
		w = map[string]string{}
		m.why[peer] = w
	}
	if why == "" {
		delete(w, tech)
	} else {
		w[tech] = why
	}
}

// whyNot says, for `pvcd peers`, why the techniques better than the path
// in use did not give one.
func (m *pathManager) whyNot(peer string, path bind.PathKind) string {
	if path == bind.PathDirect || path == bind.PathUPnP || path == bind.PathPunched {
		return ""
	}
	var out []string
	if m.ice != nil {
		if st := m.ice.Status(peer); st != "" && !strings.HasPrefix(st, "connected") {
			out = append(out, "ice "+st)
		}
	} else {
		out = append(out, "ice off")
	}
	m.mu.Lock()
	for t, w := range m.why[peer] {
		out = append(out, t+" "+w)
	}
	m.mu.Unlock()
	if m.tcpWhy != "" {
		out = append(out, "tcp "+m.tcpWhy)
	}
	if m.ttcpOff != "" {
		out = append(out, "ttcp off: "+m.ttcpOff)
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// mapped returns our UPnP-mapped endpoint, if any.
func (m *pathManager) mapped() (netip.AddrPort, bool) {
	if p := m.upnpExt.Load(); p != nil {
		return *p, true
	}
	return netip.AddrPort{}, false
}
