// Package client is the broker client that pvcd uses: a session with every
// broker of the cluster bundle (redialled when lost), a verified local View
// of the cluster kept current by subscriptions, Publish and Lookup, signed
// Signals (verified and deduplicated by ID on receipt), Relay of WireGuard
// datagrams, enrollment of a new host with a token (Enroll), and the master
// role that answers enrollment requests.
//
// Brokers are not trusted: every broker's key is pinned from the bundle, and
// everything received is verified against the bundle's master key (or a
// peer's certified key) before use. docs/broker.md is the design contract.
package client

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/signed"
)

// Config configures a Client.
type Config struct {
	Bundle *bundle.Bundle // the cluster bundle the host was given (required)
	Role   proto.Role     // RolePeer or RoleMaster; zero: RolePeer
	// Cert is the peer's signed certificate (RolePeer). A master sends its
	// signed bundle instead (filled in by New).
	Cert []byte
	// Key signs the session: the peer's signing key, or the master key.
	Key ed25519.PrivateKey
	// Admit answers an enrollment request with a signed certificate
	// (RoleMaster), e.g. master.Admit followed by Encode.
	Admit func(request []byte) ([]byte, error)
	// OnSignal receives verified, deduplicated signals addressed to this
	// peer. It runs on a session's goroutine: it must not block. Nil: dropped.
	OnSignal func(Signal)
	// OnRelay receives relayed datagrams from known, unrevoked peers. It
	// must not block and must not keep data. Nil: dropped.
	OnRelay func(from string, data []byte)
	// UDP also relays over UDP to each broker (at the HOST:PORT of its TCP
	// address), which is cheaper than the TLS session; a site that blocks
	// UDP falls back to the session. Relay prefers a broker whose UDP path
	// is confirmed.
	UDP bool
	// Brokers overrides the bundle's broker list; nil: the bundle's.
	Brokers     []bundle.Broker
	Logger      *slog.Logger     // nil: discard
	Now         func() time.Time // nil: time.Now
	Keepalive   time.Duration    // ping interval; 0: 15 s
	IdleTimeout time.Duration    // a silent session is closed; 0: 45 s
	Retry       time.Duration    // first redial delay; 0: 200 ms, doubling to 5 s
	QueueFrames int              // outbound queue per session; 0: 1,024
	// Dial opens the connections to the brokers: TCP for sessions, UDP
	// (a *net.UDPConn) for the UDP relay. Nil: a net.Dialer.
	Dial Dialer
	// VerifyCache remembers verified signatures so that the same bytes
	// are not verified twice; clients in one process may share one. Nil:
	// a cache of this client's own.
	VerifyCache *VerifyCache
}

// Dialer opens a connection, as net.Dialer.DialContext does.
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// Signal is a verified signalling message from another peer.
type Signal struct {
	From    string
	Kind    uint8
	ID      [proto.IDSize]byte
	Payload []byte
}

// Sentinel errors.
var (
	ErrRefused      = errors.New("refused by the broker")
	ErrNoBroker     = errors.New("no broker session")
	ErrNotFound     = errors.New("not found")
	ErrUnverified   = errors.New("broker answer does not verify")
	ErrBadSignal    = errors.New("signal refused")
	ErrClientClosed = errors.New("client closed")
)

// Client holds sessions with the brokers of one cluster.
type Client struct {
	cfg     Config
	log     *slog.Logger
	name    string // the peer's name (RolePeer)
	cluster string
	view    *View

	mu       sync.Mutex
	follow   bool                // follow bundle updates (Config.Brokers was nil)
	brokers  []bundle.Broker     // the brokers in use, in bundle order
	sessions map[string]*session // broker address → live session
	changed  chan struct{}       // closed and replaced when sessions change
	seen     map[[proto.IDSize]byte]time.Time
	running  bool
}

// New checks the configuration and returns a client; Run starts it.
func New(cfg Config) (*Client, error) {
	if cfg.Bundle == nil {
		return nil, errors.New("broker client: no cluster bundle")
	}
	if cfg.Role == 0 {
		cfg.Role = proto.RolePeer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = 15 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 45 * time.Second
	}
	if cfg.Retry <= 0 {
		cfg.Retry = 200 * time.Millisecond
	}
	if cfg.QueueFrames <= 0 {
		cfg.QueueFrames = 1024
	}
	if cfg.VerifyCache == nil {
		cfg.VerifyCache = NewVerifyCache(0)
	}
	follow := cfg.Brokers == nil
	if follow {
		cfg.Brokers = cfg.Bundle.Brokers
	}
	if len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("broker client: no signing key")
	}
	c := &Client{cfg: cfg, log: cfg.Logger, cluster: cfg.Bundle.Cluster, view: NewView(cfg.Bundle, cfg.Now),
		sessions: map[string]*session{}, changed: make(chan struct{}), seen: map[[proto.IDSize]byte]time.Time{},
		brokers: cfg.Brokers, follow: follow}
	c.view.cache = cfg.VerifyCache
	switch cfg.Role {
	case proto.RolePeer:
		// Only decoded: a broker says clearly why it refuses a certificate
		// (expired, revoked, another master); pvcd checks its own first.
		own, err := cert.Decode(cfg.Cert)
		if err != nil {
			return nil, fmt.Errorf("broker client: own certificate: %w", err)
		}
		if !own.SignKey.Equal(cfg.Key.Public()) {
			return nil, errors.New("broker client: the signing key is not the certificate's")
		}
		c.name = own.Name
		c.view.Add(cfg.Cert)
	case proto.RoleMaster:
		if !cfg.Bundle.MasterKey.Equal(cfg.Key.Public()) {
			return nil, errors.New("broker client: the key is not the bundle's master key")
		}
		if cfg.Admit == nil {
			return nil, errors.New("broker client: a master needs an Admit function")
		}
		// A master authenticates with its signed bundle, from which a broker
		// that does not serve the cluster yet learns it.
		c.cfg.Cert = cfg.Bundle.Encode()
	default:
		return nil, fmt.Errorf("broker client: role %s (use Enroll for an enrollee)", cfg.Role)
	}
	return c, nil
}

// Probe opens one session with broker b using the client's credentials and
// closes it: nil if the broker admits the client, else why not (a wrong
// pinned key is proto.ErrWrongBrokerKey, a refusal ErrRefused with the
// broker's reason).
func (c *Client) Probe(ctx context.Context, b bundle.Broker) error {
	s, err := dial(ctx, c.cfg.Dial, b, c.cfg.Role, c.cluster, c.cfg.Cert, c.cfg.Key, 1)
	if err != nil {
		return err
	}
	s.close()
	return nil
}

// Name returns the peer's name (empty for a master).
func (c *Client) Name() string { return c.name }

// View returns the client's verified view of the cluster.
func (c *Client) View() *View { return c.view }

// Run keeps a session with every broker until ctx ends, then closes them
// and waits for every goroutine it started.
func (c *Client) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.running {
		c.mu.Unlock()
		return errors.New("broker client already running")
	}
	c.running = true
	brokers := c.brokers
	c.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	loops := map[string]context.CancelFunc{} // by brokerID
	start := func(b bundle.Broker) {
		lctx, cancel := context.WithCancel(ctx)
		loops[brokerID(b)] = cancel
		wg.Add(1)
		go func() { defer wg.Done(); c.brokerLoop(lctx, b) }()
	}
	for _, b := range brokers {
		start(b)
	}
	if !c.follow {
		return nil
	}
	// A master-signed bundle update (a new replica, a replica gone, a new
	// key) reaches the view through the brokers: follow it.
	version := c.view.Bundle().Version
	for {
		ch := c.view.Changed()
		if b := c.view.Bundle(); b.Version > version {
			version = b.Version
			want := map[string]bool{}
			for _, br := range b.Brokers {
				want[brokerID(br)] = true
				if loops[brokerID(br)] == nil {
					c.log.Info("bundle update: new broker", "broker", br.Addr, "version", version)
					start(br)
				}
			}
			for id, cancel := range loops {
				if !want[id] {
					cancel()
					delete(loops, id)
				}
			}
			c.mu.Lock()
			c.brokers = b.Brokers
			c.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		}
	}
}

func brokerID(b bundle.Broker) string { return b.Addr + "=" + keys.FormatPublic(b.Key) }

func (c *Client) brokerLoop(ctx context.Context, b bundle.Broker) {
	wait := c.cfg.Retry
	for ctx.Err() == nil {
		start := time.Now()
		err := c.runSession(ctx, b)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			wait = c.cfg.Retry
		}
		c.log.Info("broker session ended", "broker", b.Addr, "err", err, "retry", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

func (c *Client) runSession(ctx context.Context, b bundle.Broker) error {
	ss, err := dial(ctx, c.cfg.Dial, b, c.cfg.Role, c.cluster, c.cfg.Cert, c.cfg.Key, c.cfg.QueueFrames)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait() // the UDP goroutines end once ss is closed (deferred next)
	defer ss.close()
	if c.cfg.Role == proto.RolePeer && c.cfg.UDP {
		if err := c.startUDP(ss, b, &wg); err != nil {
			c.log.Info("no UDP relay path", "broker", b.Addr, "err", err)
		}
	}
	if c.cfg.Role == proto.RolePeer {
		ss.send(&proto.Subscribe{})
	}
	c.mu.Lock()
	c.sessions[b.Addr] = ss
	c.notifyLocked()
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.sessions[b.Addr] == ss {
			delete(c.sessions, b.Addr)
			c.notifyLocked()
		}
		c.mu.Unlock()
	}()
	c.log.Info("broker session up", "broker", b.Addr, "observed", ss.observed)
	return ss.run(ctx, c.cfg.Keepalive, c.cfg.IdleTimeout, c.handle, c.objects)
}

func (c *Client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Connected returns the addresses of the brokers with a live session.
func (c *Client) Connected() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.sessions))
	for _, b := range c.brokers {
		if c.sessions[b.Addr] != nil {
			out = append(out, b.Addr)
		}
	}
	return out
}

// WaitConnected blocks until at least n broker sessions are up.
func (c *Client) WaitConnected(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		ok, ch := len(c.sessions) >= n, c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d broker sessions: %w", n, ctx.Err())
		case <-ch:
		}
	}
}

// Observed returns this host's address as each connected broker sees it.
func (c *Client) Observed() map[string]netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]netip.AddrPort{}
	for a, s := range c.sessions {
		out[a] = s.observed
	}
	return out
}

func (c *Client) live() []*session {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*session, 0, len(c.sessions))
	for _, b := range c.brokers {
		if s := c.sessions[b.Addr]; s != nil {
			out = append(out, s)
		}
	}
	return out
}

// Publish offers a signed object to every connected broker. It succeeds if
// at least one stored it (or holds a version at least as high).
func (c *Client) Publish(ctx context.Context, obj []byte) error {
	if _, err := signed.Decode(obj); err != nil {
		return err
	}
	ss := c.live()
	if len(ss) == 0 {
		return ErrNoBroker
	}
	var errs []error
	ok := false
	for _, s := range ss {
		m, err := s.request(ctx, &proto.Publish{Object: obj})
		if err == nil {
			if a, _ := m.(*proto.Ack); a == nil {
				err = fmt.Errorf("broker %s: unexpected %s", s.addr, m.Type())
			} else if a.Err != "" {
				err = fmt.Errorf("broker %s: %w: %s", s.addr, ErrRefused, a.Err)
			}
		}
		if err != nil {
			errs = append(errs, err)
		} else {
			ok = true
		}
	}
	if ok {
		return nil
	}
	return fmt.Errorf("publish: %w", errors.Join(errs...))
}

// Lookup returns a peer's verified certificate by name: from the view, else
// asking the brokers in turn. A broker's answer that does not verify is
// ignored (and counted in View().Rejected()).
func (c *Client) Lookup(ctx context.Context, name string) (*cert.Cert, error) {
	return c.lookup(ctx, proto.LookupName, name, func() *cert.Cert { return c.view.Cert(name) })
}

// LookupIP returns the verified certificate of the peer with a virtual IP.
func (c *Client) LookupIP(ctx context.Context, ip netip.Addr) (*cert.Cert, error) {
	return c.lookup(ctx, proto.LookupIP, ip.String(), func() *cert.Cert { return c.view.ByIP(ip) })
}

func (c *Client) lookup(ctx context.Context, by uint8, key string, local func() *cert.Cert) (*cert.Cert, error) {
	if ce := local(); ce != nil {
		return ce, nil
	}
	var errs []error
	for _, s := range c.live() {
		m, err := s.request(ctx, &proto.Lookup{By: by, Key: key})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		o, ok := m.(*proto.Object)
		if !ok {
			continue
		}
		if _, err := c.view.Add(o.Object); err != nil {
			c.log.Warn("broker lookup answer refused", "broker", s.addr, "key", key, "err", err)
			errs = append(errs, fmt.Errorf("broker %s: %w: %w", s.addr, ErrUnverified, err))
			continue
		}
		if ce := local(); ce != nil {
			return ce, nil
		}
	}
	return nil, fmt.Errorf("lookup %q: %w", key, errors.Join(append([]error{ErrNotFound}, errs...)...))
}

// Signal sends a signed message to a peer through every connected broker
// (the receiver drops duplicates by ID).
func (c *Client) Signal(ctx context.Context, to string, kind uint8, payload []byte) error {
	if c.name == "" {
		return errors.New("signal: only a peer sends signals")
	}
	if len(payload) > proto.MaxSignal {
		return fmt.Errorf("signal: payload of %d bytes (at most %d)", len(payload), proto.MaxSignal)
	}
	m := &proto.Signal{Cluster: c.cluster, From: c.name, To: to, Kind: kind, Payload: payload}
	rand.Read(m.ID[:])
	proto.SignSignal(m, c.cfg.Key)
	sent := 0
	for _, s := range c.live() {
		if s.sendCtx(ctx, m) == nil {
			sent++
		}
	}
	if sent == 0 {
		return fmt.Errorf("signal to %q: %w", to, ErrNoBroker)
	}
	return nil
}

// startUDP opens the UDP relay socket of a session and its reader and
// keepalive goroutines, owned by wg.
func (c *Client) startUDP(ss *session, b bundle.Broker, wg *sync.WaitGroup) error {
	if c.cfg.Dial != nil {
		conn, err := c.cfg.Dial(context.Background(), "udp", b.Addr)
		if err != nil {
			return err
		}
		u, ok := conn.(*net.UDPConn)
		if !ok {
			conn.Close()
			return fmt.Errorf("Config.Dial gave a %T for udp, want *net.UDPConn", conn)
		}
		ss.udp = u
	} else {
		ap, err := net.ResolveUDPAddr("udp", b.Addr)
		if err != nil {
			return err
		}
		if ss.udp, err = net.DialUDP("udp", nil, ap); err != nil {
			return err
		}
		// Relayed WireGuard bursts (a GSO batch is up to 64 datagrams)
		// overflow the default ~200 KiB buffers.
		_ = ss.udp.SetReadBuffer(4 << 20)
		_ = ss.udp.SetWriteBuffer(4 << 20)
	}
	wg.Add(2)
	go func() { defer wg.Done(); ss.readUDP(c.deliverRelay) }()
	go func() {
		defer wg.Done()
		ss.register()
		fast := time.NewTicker(c.cfg.Retry) // until confirmed
		defer fast.Stop()
		slow := time.NewTicker(c.cfg.Keepalive) // keeps the NAT mapping
		defer slow.Stop()
		for {
			select {
			case <-ss.done:
				return
			case <-fast.C:
				if !ss.udpOK.Load() {
					ss.register()
				}
			case <-slow.C:
				ss.register()
			}
		}
	}()
	return nil
}

func (c *Client) deliverRelay(from string, data []byte) {
	if c.cfg.OnRelay != nil && c.view.Cert(from) != nil {
		c.cfg.OnRelay(from, data)
	}
}

// Refresh renews the NAT mappings of every broker session at once: a UDP
// registration and a ping on each. Call it when the network changed under
// us (a direct path died): a mapping flushed on our NAT would otherwise
// blackhole relayed traffic until the next keepalive.
func (c *Client) Refresh() {
	for _, s := range c.live() {
		if s.udp != nil {
			s.register()
		}
		s.trySend(&proto.Ping{Nonce: uint64(time.Now().UnixNano())})
	}
}

// RelayOverUDP reports whether a broker has confirmed a UDP relay path.
func (c *Client) RelayOverUDP() bool {
	for _, s := range c.live() {
		if s.udp != nil && s.udpOK.Load() {
			return true
		}
	}
	return false
}

// Relay sends a WireGuard datagram to a peer through one broker: over UDP
// to the first broker whose UDP path is confirmed, else over the session of
// the first connected broker in bundle order. It never blocks: a full queue
// drops it.
func (c *Client) Relay(to string, data []byte) error {
	if len(data) > proto.MaxRelay {
		return fmt.Errorf("relay: datagram of %d bytes", len(data))
	}
	live := c.live()
	for _, s := range live {
		if s.udp != nil && s.udpOK.Load() {
			u := proto.UDPRelay{Token: s.token, Name: to, Data: data}
			if _, err := s.udp.Write(u.Append(nil)); err == nil {
				return nil
			}
		}
	}
	for _, s := range live {
		if s.trySend(&proto.Relay{Cluster: c.cluster, From: c.name, To: to, Data: data}) {
			return nil
		}
	}
	return fmt.Errorf("relay to %q: %w", to, ErrNoBroker)
}

// handle processes one message from a broker (on the session's reader).
func (c *Client) handle(s *session, m proto.Message) error {
	switch m := m.(type) {
	case *proto.Objects:
		c.objects(s, m.Objects)
	case *proto.Signal:
		if err := c.acceptSignal(m); err != nil {
			c.log.Debug("signal dropped", "broker", s.addr, "from", m.From, "err", err)
			return nil
		}
	case *proto.Relay:
		if m.Cluster == c.cluster && m.To == c.name {
			c.deliverRelay(m.From, m.Data)
		}
	case *proto.EnrollForward:
		if c.cfg.Role != proto.RoleMaster {
			return fmt.Errorf("unexpected %s", m.Type())
		}
		res := &proto.EnrollResult{ID: m.ID}
		crt, err := c.cfg.Admit(m.Request)
		if err != nil {
			res.Err = err.Error()
			c.log.Info("enrollment refused", "broker", s.addr, "err", err)
		} else {
			res.Cert = crt
			c.log.Info("enrollment admitted", "broker", s.addr)
		}
		s.send(res)
	case *proto.Error:
		return fmt.Errorf("broker %s: %w: %s", s.addr, ErrRefused, m.Text)
	default:
		return fmt.Errorf("unexpected %s", m.Type())
	}
	return nil
}

// objects takes the objects of one Objects frame (a snapshot or a batch of
// pushes) into the view: one change, waiters wake once. They may be
// borrowed from the session's read buffer: the view copies what it keeps.
func (c *Client) objects(s *session, objs [][]byte) {
	_, errs := c.view.addAll(objs, true)
	for _, err := range errs {
		c.log.Warn("broker object refused", "broker", s.addr, "err", err)
	}
}

// acceptSignal verifies a signal against its sender's certificate in the
// view and drops duplicates (the same ID through several brokers).
func (c *Client) acceptSignal(m *proto.Signal) error {
	if m.Cluster != c.cluster || m.To != c.name {
		return fmt.Errorf("%w: addressed to %q of %q", ErrBadSignal, m.To, m.Cluster)
	}
	sender := c.view.Cert(m.From)
	if sender == nil {
		return fmt.Errorf("%w: unknown sender %q", ErrBadSignal, m.From)
	}
	if !proto.VerifySignal(m, sender.SignKey) {
		return fmt.Errorf("%w: bad signature from %q", ErrBadSignal, m.From)
	}
	now := time.Now()
	c.mu.Lock()
	if _, dup := c.seen[m.ID]; dup {
		c.mu.Unlock()
		return nil
	}
	if len(c.seen) > 8192 {
		for id, t := range c.seen {
			if now.Sub(t) > 5*time.Minute {
				delete(c.seen, id)
			}
		}
	}
	c.seen[m.ID] = now
	c.mu.Unlock()
	if c.cfg.OnSignal != nil {
		c.cfg.OnSignal(Signal{From: m.From, Kind: m.Kind, ID: m.ID, Payload: m.Payload})
	}
	return nil
}

// SendRaw opens one session with broker b using c's credentials, sends m on
// it as is, and waits briefly for the broker's reaction: an Error frame
// becomes ErrRefused. It exists for tests of what a broker does with
// malformed or forged messages.
func SendRaw(ctx context.Context, c *Client, b bundle.Broker, m proto.Message) error {
	s, err := dial(ctx, c.cfg.Dial, b, c.cfg.Role, c.cluster, c.cfg.Cert, c.cfg.Key, 1)
	if err != nil {
		return err
	}
	defer s.close()
	if err := proto.WriteMessage(s.conn, m); err != nil {
		return err
	}
	if err := proto.WriteMessage(s.conn, &proto.Ping{Nonce: 1}); err != nil {
		return err
	}
	s.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		r, err := proto.ReadMessage(s.conn)
		if err != nil {
			return err
		}
		switch r := r.(type) {
		case *proto.Error:
			return fmt.Errorf("broker %s: %w: %s", b.Addr, ErrRefused, r.Text)
		case *proto.Pong:
			return nil
		}
	}
}
