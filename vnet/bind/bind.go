// Package bind is PVC's conn.Bind for wireguard-go. It carries WireGuard
// datagrams to each peer over the best path that works:
//
//   - direct UDP on one socket per host, wireguard-go's StdNetBind, read and
//     written in batches (recvmmsg/sendmmsg, UDP GSO/GRO, 7 MiB buffers);
//   - the broker relay, when no direct path is confirmed.
//
// WireGuard sees one Endpoint per peer ("peer:NAME"); which path a send takes
// is decided here, so the path can change under WireGuard without it
// noticing and without application connections breaking. A direct path is
// used only after a probe answered on it (ping/pong messages on the same
// socket, signed when an Auth is set); it is dropped again when probes go
// unanswered, and traffic falls back to the relay. WireGuard datagrams from
// addresses that are not a confirmed path of a known peer are dropped, so
// WireGuard's roaming can never move a peer off the path chosen here.
//
// Packets on the socket that are neither WireGuard nor probes (STUN, for
// ICE) go to the Other callback: the socket, and so the NAT mapping, is
// shared.
package bind

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// Relay carries WireGuard datagrams through a broker.
type Relay interface {
	// SendRelay sends one datagram to the named peer. It must not keep pkt.
	SendRelay(peer string, pkt []byte) error
}

// Auth signs and verifies probes; nil means probes are not authenticated
// (tests only: anyone could then make us try a wrong address).
type Auth interface {
	Sign(msg []byte) []byte
	Verify(peer string, msg, sig []byte) bool
}

// Config configures a Bind. Self is required.
type Config struct {
	Self  string // this peer's name, in probes
	Relay Relay  // nil: no relay path
	Auth  Auth
	// Other receives packets on the shared socket that are neither
	// WireGuard nor probes (e.g. STUN). It must not keep pkt. nil: dropped.
	Other func(pkt []byte, from netip.AddrPort)
	// OpenIn, if set, runs the socket creation of Open (e.g. inside a
	// network namespace). nil: runs it directly.
	OpenIn func(func() error) error
	// ProbeInterval is how often a confirmed path is probed (default 2 s);
	// an unconfirmed peer is probed 10 times faster. A path whose last pong
	// is older than 3 intervals is dropped.
	ProbeInterval time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives path changes. Nil: discarded.
	Logger *slog.Logger
	// OnTrouble, if set, is called when a peer's direct path comes in
	// doubt or is lost: the relay is about to carry its traffic, and its
	// own NAT mappings may be as stale as the path's (pvcd refreshes
	// them).
	OnTrouble func(peer string)
	// OnOversize, if set, is called (on its own goroutine) the first time
	// a batch to a peer's direct path is refused as larger than the path's
	// MTU, and again when that path changes: the overlay then clamps the
	// peer's MTU so TCP sends segments that fit.
	OnOversize func(peer string, remote netip.AddrPort)
}

// Bind implements conn.Bind. Create it with New.
type Bind struct {
	cfg Config
	std conn.Bind

	mu     sync.Mutex // guards peers, byAddr, nonces, relayIn/closed, opened
	peers  map[string]*Endpoint
	byAddr map[netip.AddrPort]*Endpoint
	nonces map[uint64]pending // pings awaiting a pong
	opened bool
	relayq chan relayed  // relayed datagrams in; replaced at each Open
	closed chan struct{} // closed by Close; replaced at each Open

	// Counters (atomic).
	droppedUnknown atomic.Uint64 // WireGuard datagrams from unknown addresses
	droppedRelay   atomic.Uint64 // relayed datagrams dropped (queue full or closed)
	oversize       atomic.Uint64 // batches refused for the path's MTU and sent one datagram at a time
}

type pending struct {
	peer string
	addr netip.AddrPort
	sent time.Time
}

type relayed struct {
	ep     *Endpoint
	pkt    []byte
	stream bool // from a TCP path, not the relay
}

var (
	_ conn.Bind     = (*Bind)(nil)
	_ conn.Endpoint = (*Endpoint)(nil)
)

// ErrNoPath is returned by Send when a peer has neither a confirmed direct
// path nor a relay.
var ErrNoPath = errors.New("no path to peer")

// New returns a Bind.
func New(cfg Config) *Bind {
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Bind{
		cfg: cfg, std: conn.NewStdNetBind(),
		peers: map[string]*Endpoint{}, byAddr: map[netip.AddrPort]*Endpoint{}, nonces: map[uint64]pending{},
		closed: make(chan struct{}),
	}
}

// Open opens the UDP socket (on port, 0: any) and returns wireguard-go's
// receive functions: the socket's, and the relay's.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.opened {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	var fns []conn.ReceiveFunc
	var actual uint16
	open := func() error {
		var err error
		fns, actual, err = b.std.Open(port)
		return err
	}
	var err error
	if b.cfg.OpenIn != nil {
		err = b.cfg.OpenIn(open)
	} else {
		err = open()
	}
	if err != nil {
		return nil, 0, err
	}
	b.opened = true
	b.closed = make(chan struct{})
	b.relayq = make(chan relayed, 1024)
	out := make([]conn.ReceiveFunc, 0, len(fns)+1)
	for _, fn := range fns {
		out = append(out, b.wrapReceive(fn))
	}
	out = append(out, b.makeReceiveRelay(b.relayq, b.closed))
	return out, actual, nil
}

// Close closes the socket; the receive functions then return net.ErrClosed.
// Open works again afterwards.
func (b *Bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.opened {
		return nil
	}
	b.opened = false
	close(b.closed)
	for _, e := range b.peers {
		if s := e.stream.Load(); s != nil {
			e.dropStream(s)
		}
	}
	return b.std.Close()
}

// SetMark implements conn.Bind.
func (b *Bind) SetMark(mark uint32) error { return b.std.SetMark(mark) }

// BatchSize implements conn.Bind.
func (b *Bind) BatchSize() int { return b.std.BatchSize() }

// ParseEndpoint accepts "peer:NAME", the only endpoint form PVC gives
// wireguard-go.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	name, ok := strings.CutPrefix(s, "peer:")
	if !ok || name == "" || len(name) > maxName {
		return nil, fmt.Errorf("bind: endpoint %q: want peer:NAME", s)
	}
	return b.Peer(name), nil
}

// Peer returns the endpoint of the named peer, creating it if needed.
func (b *Bind) Peer(name string) *Endpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peerLocked(name)
}

func (b *Bind) peerLocked(name string) *Endpoint {
	ep := b.peers[name]
	if ep == nil {
		ep = &Endpoint{b: b, name: name}
		b.peers[name] = ep
	}
	return ep
}

// RemovePeer forgets a peer: its paths, candidates and pending probes.
func (b *Bind) RemovePeer(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ep := b.peers[name]
	if ep == nil {
		return
	}
	delete(b.peers, name)
	for a, e := range b.byAddr {
		if e == ep {
			delete(b.byAddr, a)
		}
	}
	ep.direct.Store(nil)
	if s := ep.stream.Load(); s != nil {
		ep.dropStream(s)
	}
}

// SetCandidates sets the addresses where the peer may be reached directly
// (its host addresses, a UPnP mapping). They are probed; the first that
// answers becomes the direct path. Candidates learnt since (AddCandidate,
// peer-reflexive) are kept when still of a known kind.
func (b *Bind) SetCandidates(name string, cands []Candidate) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ep := b.peerLocked(name)
	ep.mu.Lock()
	next := append([]Candidate(nil), cands...)
	if len(next) > maxCandidates {
		next = next[:maxCandidates]
	}
	for _, c := range ep.candidates {
		if c.Kind == PathPunched && len(next) < maxCandidates && !hasCandidate(next, c.Addr) {
			next = append(next, c)
		}
	}
	ep.candidates = next
	ep.fastLeft = fastRounds
	addrs := make([]netip.AddrPort, len(next))
	for i, c := range next {
		addrs[i] = c.Addr
	}
	ep.mu.Unlock()
	if ep.direct.Load() == nil {
		go b.probeNow(ep, addrs)
	}
}

// AddCandidate adds one address (e.g. the remote side of the pair ICE
// selected) and probes the peer fast again. A known address keeps its
// kind: the peer's own address stays direct and its UPnP mapping upnp,
// whichever technique found them.
func (b *Bind) AddCandidate(name string, c Candidate) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ep := b.peerLocked(name)
	ep.mu.Lock()
	defer ep.mu.Unlock()
	for i := range ep.candidates {
		if ep.candidates[i].Addr == c.Addr {
			ep.fastLeft = fastRounds
			go b.probeNow(ep, []netip.AddrPort{c.Addr})
			return
		}
	}
	if len(ep.candidates) >= maxCandidates {
		ep.candidates = ep.candidates[1:] // the oldest goes
	}
	ep.candidates = append(ep.candidates, c)
	ep.fastLeft = fastRounds
	go b.probeNow(ep, []netip.AddrPort{c.Addr})
}

func hasCandidate(cs []Candidate, a netip.AddrPort) bool {
	for _, c := range cs {
		if c.Addr == a {
			return true
		}
	}
	return false
}

// HasDirect reports whether the peer has a confirmed direct UDP path.
func (b *Bind) HasDirect(name string) bool {
	b.mu.Lock()
	ep := b.peers[name]
	b.mu.Unlock()
	return ep != nil && ep.direct.Load() != nil
}

// SendTo sends one datagram from the shared socket (for ICE's STUN
// messages: they must leave from the port WireGuard uses).
func (b *Bind) SendTo(pkt []byte, to netip.AddrPort) error {
	ep, err := b.std.ParseEndpoint(to.String())
	if err != nil {
		return err
	}
	return b.std.Send([][]byte{pkt}, ep)
}

// Send sends bufs to ep over its current path: the confirmed direct path in
// one batch, else the relay one datagram at a time.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*Endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	if d := e.direct.Load(); d != nil {
		err := b.sendDirect(e, d, bufs)
		if err == nil {
			for _, p := range bufs {
				e.txDirect.Add(uint64(len(p)))
			}
		}
		if e.suspect.Load() && b.cfg.Relay != nil {
			for _, p := range bufs {
				if b.cfg.Relay.SendRelay(e.name, p) == nil {
					e.txRelay.Add(uint64(len(p)))
				}
			}
			return nil // the copy on the relay may get through
		}
		return err
	}
	if s := e.stream.Load(); s != nil {
		if err := s.send(bufs); err == nil {
			return nil
		}
		e.dropStream(s) // broken: the relay takes over
	}
	if b.cfg.Relay == nil {
		return fmt.Errorf("%w %s", ErrNoPath, e.name)
	}
	for _, p := range bufs {
		if err := b.cfg.Relay.SendRelay(e.name, p); err != nil {
			return err
		}
		e.txRelay.Add(uint64(len(p)))
	}
	return nil
}

// sendDirect sends bufs on a direct path. wireguard-go's StdNetBind
// coalesces a batch into UDP GSO sends, and the kernel refuses a GSO send
// whose datagrams are larger than the path's MTU (EMSGSIZE): a TUN MTU too
// large for this host's link, or a smaller MTU learnt from a router's ICMP.
// The whole batch would be lost, and every batch after it: TCP over the
// overlay stalls. Sent one at a time, the datagrams are fragmented by the
// kernel instead, which costs throughput but loses nothing (a datagram
// that went out before the error goes out twice; WireGuard drops the
// second copy as a replay). The first time for a path, the log says so and
// OnOversize is called.
func (b *Bind) sendDirect(e *Endpoint, d *path, bufs [][]byte) error {
	err := b.std.Send(bufs, d.std)
	if len(bufs) < 2 || !errors.Is(err, unix.EMSGSIZE) {
		return err
	}
	b.oversize.Add(1)
	if last := e.oversizeAt.Swap(&d.addr); last == nil || *last != d.addr {
		b.cfg.Logger.Warn("datagrams larger than the path's MTU: sent fragmented",
			"peer", e.name, "remote", d.addr, "datagram", len(bufs[0]))
		if b.cfg.OnOversize != nil {
			go b.cfg.OnOversize(e.name, d.addr)
		}
	}
	err = nil
	for i := range bufs {
		if serr := b.std.Send(bufs[i:i+1], d.std); serr != nil {
			err = serr
		}
	}
	return err
}

// DeliverRelay hands the Bind a WireGuard datagram that arrived from the
// named peer through a broker. It copies pkt. When the queue is full the
// datagram is dropped, as a congested link would.
func (b *Bind) DeliverRelay(from string, pkt []byte) {
	b.mu.Lock()
	q, open := b.relayq, b.opened
	ep := b.peerLocked(from)
	b.mu.Unlock()
	if !open {
		b.droppedRelay.Add(1)
		return
	}
	if ep.direct.Load() != nil {
		ep.relayIn.Store(true)
	}
	select {
	case q <- relayed{ep: ep, pkt: append([]byte(nil), pkt...)}:
	default:
		b.droppedRelay.Add(1)
	}
}

func (b *Bind) makeReceiveRelay(q chan relayed, closed chan struct{}) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var r relayed
		select {
		case r = <-q:
		case <-closed:
			return 0, net.ErrClosed
		}
		n := 0
		for {
			sizes[n] = copy(bufs[n], r.pkt)
			eps[n] = r.ep
			if r.stream {
				r.ep.rxStream.Add(uint64(sizes[n]))
			} else {
				r.ep.rxRelay.Add(uint64(sizes[n]))
			}
			n++
			if n == len(bufs) {
				return n, nil
			}
			select {
			case r = <-q:
			default:
				return n, nil
			}
		}
	}
}

// wrapReceive turns a socket receive function's endpoints into peer
// endpoints, and takes probes and other non-WireGuard packets out of the
// batch (size 0: wireguard-go skips them).
func (b *Bind) wrapReceive(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, err := fn(bufs, sizes, eps)
		for i := 0; i < n; i++ {
			pkt := bufs[i][:sizes[i]]
			std, ok := eps[i].(*conn.StdNetEndpoint)
			if !ok || sizes[i] == 0 {
				continue
			}
			from := netip.AddrPortFrom(std.Addr().Unmap(), std.Port())
			switch {
			case len(pkt) >= 4 && pkt[0] >= 1 && pkt[0] <= 4 && pkt[1] == 0 && pkt[2] == 0 && pkt[3] == 0:
				b.mu.Lock()
				ep := b.byAddr[from]
				b.mu.Unlock()
				if ep == nil {
					b.droppedUnknown.Add(1)
					sizes[i] = 0
					continue
				}
				ep.rxDirect.Add(uint64(len(pkt)))
				eps[i] = ep
			case isProbe(pkt):
				b.handleProbe(pkt, from, std)
				sizes[i] = 0
			default:
				if b.cfg.Other != nil {
					b.cfg.Other(pkt, from)
				}
				sizes[i] = 0
			}
		}
		return n, err
	}
}

// Oversize returns how many batches of datagrams the kernel refused as
// larger than their path's MTU, which were then sent one at a time.
func (b *Bind) Oversize() uint64 { return b.oversize.Load() }

// Counters returns how many WireGuard datagrams were dropped because they
// came from an address that is no confirmed path, and how many relayed
// datagrams were dropped.
func (b *Bind) Counters() (unknownSource, relayDrops uint64) {
	return b.droppedUnknown.Load(), b.droppedRelay.Load()
}
