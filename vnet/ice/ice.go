// Package ice punches UDP holes between two peers with ICE (RFC 8445, the
// pion/ice agent) on the socket WireGuard uses, so the mapping the NATs
// open is the one WireGuard's datagrams then take.
//
// The agents gather host and server-reflexive candidates (the brokers'
// STUN service, asked from the shared socket through a UDP mux), exchange
// credentials and candidates through the brokers' signalling, and run
// connectivity checks; peer-reflexive candidates appear on their own when
// a NAT gives a new mapping. The pair ICE selects is handed to the Bind as
// a candidate, where the signed path probes confirm it before WireGuard
// uses it. The agent then keeps the mapping open with its keepalives.
//
// The peer with the smaller name controls and offers; the other asks for
// an offer with a request. One attempt per pair runs at a time.
package ice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/logging"
	"github.com/pion/stun/v4"
	"github.com/pvc-project/pvc/vnet/bind"
)

// Config configures Agents. Self, Port, Send, Signal and OnPath are required.
type Config struct {
	Self string
	Port uint16 // the shared socket's port
	// STUN lists the brokers' STUN services (their UDP ports).
	STUN []netip.AddrPort
	// Send sends one datagram from the shared socket.
	Send func(pkt []byte, to netip.AddrPort) error
	// Signal sends a message to a peer through the brokers.
	Signal func(ctx context.Context, to string, msg []byte) error
	// OnPath receives the remote address of the pair ICE selected, and
	// its kind: direct for the peer's host candidate, punched otherwise
	// (the receiver may know better: a host candidate can be a UPnP
	// mapping's address).
	OnPath func(peer string, remote netip.AddrPort, kind bind.PathKind)
	// Exclude reports addresses never to use as candidates, ours or the
	// peer's (the overlay's subnet). Loopback is always excluded.
	Exclude func(netip.Addr) bool
	// Attempt bounds one attempt (default 5 s: checks across a 300 ms
	// round trip end well within it). After a failed attempt the next one
	// toward that peer waits Backoff (default 2 s), doubled after each
	// further failure up to MaxBackoff (default 60 s).
	Attempt, Backoff, MaxBackoff time.Duration
	Logger                       *slog.Logger
}

// Agents runs the ICE sessions of one host.
type Agents struct {
	cfg  Config
	log  *slog.Logger
	conn *sharedConn
	mux  *ice.UniversalUDPMuxDefault
	urls []*stun.URI
	lf   logging.LoggerFactory

	mu       sync.Mutex // guards sessions, failed, closed
	sessions map[string]*session
	failed   map[string]failure
	closed   bool
}

type failure struct {
	at    time.Time
	why   string
	count int // failures in a row
}

// wait returns how long after f the next attempt may start.
func (a *Agents) wait(f failure) time.Duration {
	if f.count == 0 {
		return 0
	}
	d := a.cfg.Backoff
	for i := 1; i < f.count && d < a.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, a.cfg.MaxBackoff)
}

type session struct {
	peer        string
	gen         uint64
	controlling bool
	agent       *ice.Agent
	ctx         context.Context
	cancel      context.CancelFunc
	gathered    chan struct{} // closed when gathering completes
	mu          sync.Mutex
	cands       []string // local candidates, marshalled
	remoteSet   bool
	state       ice.ConnectionState
	selected    netip.AddrPort
}

// New starts the mux on the shared socket. Close stops it.
func New(cfg Config) (*Agents, error) {
	if cfg.Self == "" || cfg.Port == 0 || cfg.Send == nil || cfg.Signal == nil || cfg.OnPath == nil {
		return nil, errors.New("ice: Self, Port, Send, Signal and OnPath are required")
	}
	if cfg.Attempt == 0 {
		cfg.Attempt = 5 * time.Second
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = 2 * time.Second
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 60 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agents{cfg: cfg, log: log, sessions: map[string]*session{}, failed: map[string]failure{}}
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelDisabled
	a.lf = lf
	for _, s := range cfg.STUN {
		a.urls = append(a.urls, &stun.URI{Scheme: stun.SchemeTypeSTUN, Host: s.Addr().String(), Port: int(s.Port()), Proto: stun.ProtoTypeUDP})
	}
	a.conn = newSharedConn(cfg.Port, cfg.Send)
	a.mux = ice.NewUniversalUDPMuxDefault(ice.UniversalUDPMuxParams{UDPConn: a.conn, Logger: lf.NewLogger("mux")})
	return a, nil
}

// Input hands the Agents a packet that arrived on the shared socket and is
// neither WireGuard nor a path probe (STUN). It copies pkt.
func (a *Agents) Input(pkt []byte, from netip.AddrPort) { a.conn.input(pkt, from) }

// Close ends every session and the mux.
func (a *Agents) Close() error {
	a.mu.Lock()
	a.closed = true
	ss := a.sessions
	a.sessions = map[string]*session{}
	a.mu.Unlock()
	for _, s := range ss {
		s.close()
	}
	return a.mux.Close()
}

// Stop ends the session toward a peer (it was removed).
func (a *Agents) Stop(peer string) {
	a.mu.Lock()
	s := a.sessions[peer]
	delete(a.sessions, peer)
	delete(a.failed, peer)
	a.mu.Unlock()
	if s != nil {
		s.close()
	}
}

// Status says where the session toward peer stands: "" (none yet),
// "checking", "connected <addr>", or "failed: why".
func (a *Agents) Status(peer string) string {
	a.mu.Lock()
	s, f := a.sessions[peer], a.failed[peer]
	a.mu.Unlock()
	if s != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.state == ice.ConnectionStateConnected && s.selected.IsValid() {
			return "connected " + s.selected.String()
		}
		return "checking"
	}
	if f.why != "" {
		return "failed: " + f.why
	}
	return ""
}

// Connect starts an attempt toward peer unless one runs or one failed
// less than Backoff ago: the controlling side offers, the other requests.
func (a *Agents) Connect(peer string) {
	if peer == a.cfg.Self {
		return
	}
	a.mu.Lock()
	if f := a.failed[peer]; a.closed || a.sessions[peer] != nil || time.Since(f.at) < a.wait(f) {
		a.mu.Unlock()
		return
	}
	if a.cfg.Self > peer {
		a.mu.Unlock()
		a.send(peer, &Message{Type: MsgRequest})
		return
	}
	s, err := a.newSessionLocked(peer, uint64(time.Now().UnixNano()), true)
	a.mu.Unlock()
	if err != nil {
		a.fail(peer, nil, err.Error())
		return
	}
	go a.offer(s)
}

// Handle processes a message from a peer's agent (verified by the broker
// client: it is really from that peer).
func (a *Agents) Handle(from string, payload []byte) error {
	m, err := ParseMessage(payload)
	if err != nil {
		return err
	}
	controlling := a.cfg.Self < from
	switch m.Type {
	case MsgRequest:
		if !controlling {
			return fmt.Errorf("ice: request from %s, which controls", from)
		}
		a.mu.Lock()
		delete(a.failed, from) // the peer wants a path now
		a.mu.Unlock()
		a.Connect(from)
	case MsgOffer:
		if controlling {
			return fmt.Errorf("ice: offer from %s, which does not control", from)
		}
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return nil
		}
		old := a.sessions[from]
		delete(a.sessions, from)
		s, err := a.newSessionLocked(from, m.Gen, false)
		a.mu.Unlock()
		if old != nil {
			old.close()
		}
		if err != nil {
			return err
		}
		go a.answer(s, m)
	case MsgAnswer:
		if !controlling {
			return fmt.Errorf("ice: answer from %s, which does not control", from)
		}
		a.mu.Lock()
		s := a.sessions[from]
		a.mu.Unlock()
		if s == nil || s.gen != m.Gen {
			return nil // an old attempt's
		}
		go a.check(s, m)
	}
	return nil
}

func (a *Agents) newSessionLocked(peer string, gen uint64, controlling bool) (*session, error) {
	ipOK := func(ip net.IP) bool {
		addr, ok := netip.AddrFromSlice(ip)
		addr = addr.Unmap()
		return ok && addr.Is4() && !addr.IsLoopback() && !addr.IsLinkLocalUnicast() && (a.cfg.Exclude == nil || !a.cfg.Exclude(addr))
	}
	agent, err := ice.NewAgentWithOptions(
		ice.WithUrls(a.urls),
		ice.WithNetworkTypes([]ice.NetworkType{ice.NetworkTypeUDP4}),
		ice.WithCandidateTypes([]ice.CandidateType{ice.CandidateTypeHost, ice.CandidateTypeServerReflexive}),
		ice.WithUDPMux(a.mux),
		ice.WithUDPMuxSrflx(a.mux),
		ice.WithMulticastDNSMode(ice.MulticastDNSModeDisabled),
		ice.WithIPFilter(ipOK),
		ice.WithRemoteIPFilter(ipOK),
		ice.WithSTUNGatherTimeout(time.Second),
		ice.WithCheckInterval(50*time.Millisecond),
		ice.WithKeepaliveInterval(2*time.Second), // well inside NAT UDP timeouts (30 s and more)
		ice.WithDisconnectedTimeout(6*time.Second),
		ice.WithFailedTimeout(6*time.Second),
		ice.WithSrflxAcceptanceMinWait(100*time.Millisecond),
		ice.WithPrflxAcceptanceMinWait(200*time.Millisecond),
		ice.WithLoggerFactory(a.lf),
	)
	if err != nil {
		return nil, fmt.Errorf("ice: agent: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{peer: peer, gen: gen, controlling: controlling, agent: agent, ctx: ctx, cancel: cancel, gathered: make(chan struct{})}
	var once sync.Once
	_ = agent.OnCandidate(func(c ice.Candidate) {
		if c == nil {
			once.Do(func() { close(s.gathered) })
			return
		}
		if ap, ok := candAddr(c); ok && (a.cfg.Exclude == nil || !a.cfg.Exclude(ap.Addr())) {
			s.mu.Lock()
			if len(s.cands) < MaxCandidates {
				s.cands = append(s.cands, c.Marshal())
			}
			s.mu.Unlock()
		}
	})
	_ = agent.OnConnectionStateChange(func(st ice.ConnectionState) {
		s.mu.Lock()
		s.state = st
		s.mu.Unlock()
		if st == ice.ConnectionStateFailed || st == ice.ConnectionStateDisconnected {
			go a.fail(peer, s, "connectivity checks "+st.String())
		}
	})
	_ = agent.OnSelectedCandidatePairChange(func(local, remote ice.Candidate) {
		ap, ok := candAddr(remote)
		if !ok {
			return
		}
		kind := bind.PathPunched
		if remote.Type() == ice.CandidateTypeHost {
			kind = bind.PathDirect
		}
		s.mu.Lock()
		s.selected = ap
		s.mu.Unlock()
		a.mu.Lock()
		delete(a.failed, peer) // backoff starts over
		a.mu.Unlock()
		a.log.Info("ice pair selected", "peer", peer, "local", local.String(), "remote", remote.String())
		a.cfg.OnPath(peer, ap, kind)
	})
	a.sessions[peer] = s
	return s, nil
}

func candAddr(c ice.Candidate) (netip.AddrPort, bool) {
	ip, err := netip.ParseAddr(c.Address())
	if err != nil || c.Port() <= 0 || c.Port() > 65535 {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(c.Port())), true
}

// gather collects local candidates (at most 2 s: a site that blocks UDP
// never hears from STUN) and returns the credentials and candidates.
func (a *Agents) gather(s *session) (*Message, error) {
	if err := s.agent.GatherCandidates(); err != nil {
		return nil, err
	}
	select {
	case <-s.gathered:
	case <-time.After(2 * time.Second):
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
	ufrag, pwd, err := s.agent.GetLocalUserCredentials()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	cands := append([]string(nil), s.cands...)
	s.mu.Unlock()
	return &Message{Gen: s.gen, Ufrag: ufrag, Pwd: pwd, Candidates: cands}, nil
}

func (a *Agents) offer(s *session) {
	m, err := a.gather(s)
	if err != nil {
		a.fail(s.peer, s, "gather: "+err.Error())
		return
	}
	m.Type = MsgOffer
	if !a.send(s.peer, m) {
		a.fail(s.peer, s, "no broker carried the offer")
		return
	}
	// The answer comes to Handle; without one the attempt times out.
	select {
	case <-time.After(a.cfg.Attempt):
		s.mu.Lock()
		started := s.remoteSet
		s.mu.Unlock()
		if !started {
			a.fail(s.peer, s, "no answer")
		}
	case <-s.ctx.Done():
	}
}

func (a *Agents) answer(s *session, offer *Message) {
	m, err := a.gather(s)
	if err != nil {
		a.fail(s.peer, s, "gather: "+err.Error())
		return
	}
	m.Type = MsgAnswer
	if !a.send(s.peer, m) {
		a.fail(s.peer, s, "no broker carried the answer")
		return
	}
	a.check(s, offer)
}

// check adds the peer's candidates and runs the connectivity checks.
func (a *Agents) check(s *session, m *Message) {
	s.mu.Lock()
	if s.remoteSet {
		s.mu.Unlock()
		return
	}
	s.remoteSet = true
	s.mu.Unlock()
	for _, raw := range m.Candidates {
		c, err := ice.UnmarshalCandidate(raw)
		if err != nil {
			a.log.Debug("ice: bad candidate", "peer", s.peer, "candidate", raw, "err", err)
			continue
		}
		if ap, ok := candAddr(c); !ok || !ap.Addr().Is4() || ap.Addr().IsLoopback() || (a.cfg.Exclude != nil && a.cfg.Exclude(ap.Addr())) {
			continue
		}
		_ = s.agent.AddRemoteCandidate(c)
	}
	ctx, cancel := context.WithTimeout(s.ctx, a.cfg.Attempt)
	defer cancel()
	var err error
	if s.controlling {
		_, err = s.agent.Dial(ctx, m.Ufrag, m.Pwd)
	} else {
		_, err = s.agent.Accept(ctx, m.Ufrag, m.Pwd)
	}
	if err != nil {
		a.fail(s.peer, s, "connectivity checks: "+err.Error())
	}
}

// fail ends session s (if still the peer's) and remembers why.
func (a *Agents) fail(peer string, s *session, why string) {
	a.mu.Lock()
	if s != nil && a.sessions[peer] != s {
		a.mu.Unlock()
		if s != nil {
			s.close()
		}
		return
	}
	delete(a.sessions, peer)
	a.failed[peer] = failure{at: time.Now(), why: why, count: a.failed[peer].count + 1}
	a.mu.Unlock()
	a.log.Info("ice attempt ended", "peer", peer, "why", why)
	if s != nil {
		s.close()
	}
}

func (s *session) close() {
	s.cancel()
	go s.agent.Close() // may wait for the agent's loop
}

func (a *Agents) send(peer string, m *Message) bool {
	b, err := m.Marshal()
	if err != nil {
		a.log.Warn("ice: message", "err", err)
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := a.cfg.Signal(ctx, peer, b); err != nil {
		a.log.Info("ice: signal", "peer", peer, "err", err)
		return false
	}
	return true
}
