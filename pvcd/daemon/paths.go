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
	"time"

	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/endpoint"
	"github.com/pvc-project/pvc/vnet/bind"
	vice "github.com/pvc-project/pvc/vnet/ice"
	"github.com/pvc-project/pvc/vnet/overlay"
	"github.com/pvc-project/pvc/vnet/upnp"
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
	d    *daemon
	o    *overlay.Overlay
	tech Techniques
	ice  *vice.Agents // nil: ICE off
	tcp  net.Listener // nil: TCP off

	upnpExt atomic.Pointer[netip.AddrPort] // our mapped endpoint, while mapped
	upnpWhy atomic.Pointer[string]

	mu      sync.Mutex
	why     map[string]map[string]string // peer → technique → why it failed
	tcpBusy map[string]bool
	tcpLast map[string]time.Time // last TCP attempt toward a peer
}

const (
	udpGrace   = 1500 * time.Millisecond // a UDP path usually confirms within this
	retryEvery = time.Second             // peers on the relay are looked at this often (ICE keeps its own backoff)
	tcpEvery   = 10 * time.Second        // TCP techniques toward a peer at most this often
)

func newPathManager(d *daemon, o *overlay.Overlay, tech Techniques) *pathManager {
	return &pathManager{d: d, o: o, tech: tech, why: map[string]map[string]string{}, tcpBusy: map[string]bool{}, tcpLast: map[string]time.Time{}}
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
	if m.tech[TechTCP] {
		ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", port))
		if err != nil {
			m.d.log.Warn("direct TCP: no listener; peers whose UDP is blocked cannot connect to us", "port", port, "err", err)
		} else {
			m.tcp = ln
			run(func() { m.acceptTCP(ctx) })
		}
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
	return nil
}

func (m *pathManager) close() {
	if m.ice != nil {
		_ = m.ice.Close()
	}
	if m.tcp != nil {
		_ = m.tcp.Close()
	}
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
	}
}

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
	if m.ice != nil {
		m.ice.Connect(peer)
	}
	if b.HasStream(peer) || !(m.tech[TechTCP]) {
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
		time.Sleep(udpGrace)
		if b.HasDirect(peer) || b.HasStream(peer) {
			return
		}
		m.dialTCP(peer)
	}()
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
			peer, err := m.o.Bind().AddStream(c, bind.PathDirect, "")
			if err != nil {
				m.d.log.Info("TCP path refused", "from", c.RemoteAddr(), "err", err)
				return
			}
			if !m.d.knownPeer(peer) {
				m.o.Bind().RemovePeer(peer) // proved a key we do not know: not a peer
				return
			}
			m.d.log.Info("TCP path", "peer", peer, "from", c.RemoteAddr())
		}()
	}
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
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
