// Package server is pvc-broker's service: TLS sessions with peers, enrollees,
// masters and other replicas; the registry of signed objects with
// "highest valid version wins" merging; subscriptions; signalling and relay
// forwarding; enrollment forwarding to a master; replica links with
// anti-entropy; STUN on UDP; limits and Prometheus metrics.
//
// The broker is not trusted for identity: it verifies every object before
// storing it, but peers verify everything again. docs/broker.md is the
// design contract.
package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/signed"
)

// Config is a broker's configuration. Zero values take the defaults noted.
type Config struct {
	StateDir    string   // broker.key, clusters/, registry/ (required)
	PeerBrokers []string // HOST:PORT of other replicas to link with
	Bundles     [][]byte // cluster bundles to serve, besides those in StateDir
	Limits      Limits
	Logger      *slog.Logger     // nil: discard
	Now         func() time.Time // nil: time.Now
	// Hook, if set, sees every message the broker sends to a peer, master or
	// enrollee session and may replace it. Only test doubles of malicious
	// brokers set it.
	Hook func(m proto.Message) proto.Message
}

// Limits bound what clients can make the broker do.
type Limits struct {
	MaxSessions      int           // 0: 10,000
	MaxClusters      int           // 0: 1,000
	ConnRate         float64       // new connections per second per source IP; 0: 20 (burst 4×)
	EnrollRate       float64       // enrollments per second per source IP; 0: 0.5 (burst 10)
	QueueFrames      int           // outbound queue of a session, frames; 0: 4,096
	QueueBytes       int           // outbound queue of a session, bytes; 0: 16 MiB
	RelayRate        float64       // relayed bytes per second per peer; 0: 8 MiB/s (burst 1 s)
	IdleTimeout      time.Duration // close a silent session; 0: 45 s
	Keepalive        time.Duration // replica links ping; 0: 15 s
	HandshakeTimeout time.Duration // 0: 10 s
	EnrollTimeout    time.Duration // 0: 30 s
	ReplicaRetry     time.Duration // first retry of a lost replica link; 0: 500 ms (then doubling to 10 s)
}

func (l *Limits) fill() {
	def := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	deff := func(p *float64, v float64) {
		if *p <= 0 {
			*p = v
		}
	}
	defd := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	def(&l.MaxSessions, 10000)
	def(&l.MaxClusters, 1000)
	deff(&l.ConnRate, 20)
	deff(&l.EnrollRate, 0.5)
	def(&l.QueueFrames, 4096)
	def(&l.QueueBytes, 16<<20)
	deff(&l.RelayRate, 8<<20)
	defd(&l.IdleTimeout, 45*time.Second)
	defd(&l.Keepalive, 15*time.Second)
	defd(&l.HandshakeTimeout, 10*time.Second)
	defd(&l.EnrollTimeout, 30*time.Second)
	defd(&l.ReplicaRetry, 500*time.Millisecond)
}

// Listeners are the sockets a broker serves; TCP is required.
type Listeners struct {
	TCP     net.Listener   // peer sessions (TLS is added by the server)
	UDP     net.PacketConn // STUN; nil: none
	Metrics net.Listener   // Prometheus text on any path; nil: none
}

// Server is one broker replica.
type Server struct {
	cfg     Config
	log     *slog.Logger
	key     ed25519.PrivateKey
	pub     ed25519.PublicKey
	tls     *tls.Config
	metrics *metrics
	conns   *limiter // new connections per source IP
	enrolls *limiter // enrollments per source IP
	setups  gate     // sessions computing their set-up at once

	mu       sync.Mutex
	clusters map[string]*cluster
	sessions map[uint64]*session             // every authenticated session
	replicas map[uint64]*session             // replica links, both directions
	pending  map[uint64]*enrollWait          // enrollment requests in flight
	tokens   map[[proto.IDSize]byte]*session // peer sessions by UDP relay token
	nsess    int                             // connections past the TCP accept
	open     map[net.Conn]bool               // every accepted connection, closed at shutdown
	state    runState

	pc net.PacketConn // the UDP socket, or nil; set before Serve starts its goroutines

	wg sync.WaitGroup // every goroutine the server starts
}

type runState int

const (
	stateNew runState = iota
	stateRunning
	stateClosed
)

// ErrState is returned by Serve on a server that already ran.
var ErrState = errors.New("broker server already started")

// KeyFile is the broker's key in its state dir.
const KeyFile = "broker.key"

// LoadOrCreateKey returns the broker key in stateDir, creating it (0600) on
// first use; created says whether it was made now.
func LoadOrCreateKey(stateDir string) (key ed25519.PrivateKey, created bool, err error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, false, fmt.Errorf("broker state dir: %w", err)
	}
	p := filepath.Join(stateDir, KeyFile)
	key, err = keys.LoadSigning(p)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	if key, err = keys.NewSigning(); err != nil {
		return nil, false, err
	}
	if err := keys.SaveSigning(p, key); err != nil {
		return nil, false, err
	}
	return key, true, nil
}

// New loads (or creates) the broker's key and state and returns a server
// ready to Serve.
func New(cfg Config) (*Server, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("broker: no state dir")
	}
	cfg.Limits.fill()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	key, _, err := LoadOrCreateKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	tc, err := proto.ServerTLS(key)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger, key: key, pub: key.Public().(ed25519.PublicKey), tls: tc,
		metrics:  newMetrics(),
		conns:    newLimiter(cfg.Limits.ConnRate, 4*cfg.Limits.ConnRate),
		enrolls:  newLimiter(cfg.Limits.EnrollRate, 10),
		setups:   newGate(0),
		clusters: map[string]*cluster{}, sessions: map[uint64]*session{},
		replicas: map[uint64]*session{}, pending: map[uint64]*enrollWait{},
		tokens: map[[proto.IDSize]byte]*session{}, open: map[net.Conn]bool{},
	}
	if err := s.loadState(); err != nil {
		return nil, err
	}
	for _, b := range cfg.Bundles {
		if _, err := s.addBundle(b, true); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// PublicKey returns the broker's public key (pinned in cluster bundles).
func (s *Server) PublicKey() ed25519.PublicKey { return s.pub }

// Identity returns the broker's identity in the form that
// `pvcd cluster init --broker` takes: HOST:PORT=BASE64KEY.
func (s *Server) Identity(addr string) string { return addr + "=" + keys.FormatPublic(s.pub) }

// Publish verifies a signed object and stores it as if a master session had
// published it (replicas and subscribers get it). It reports whether the
// object was new.
func (s *Server) Publish(obj []byte) (bool, error) {
	_, isNew, err := s.accept(obj, &session{role: proto.RoleMaster})
	return isNew, err
}

// Held returns the version of an object in the registry, and whether it
// is there.
func (s *Server) Held(cluster string, kind signed.Kind, subject string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.clusters[cluster]; c != nil {
		if e := c.objs[objKey{kind, subject}]; e != nil {
			return e.version, true
		}
	}
	return 0, false
}

// UDPBuffer is the socket buffer size asked for the UDP relay socket (the
// kernel caps it at net.core.rmem_max/wmem_max).
const UDPBuffer = 4 << 20

// ListenAndServe listens on the given addresses (udp and metrics may be
// empty) and serves until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context, tcp, udp, metricsAddr string) error {
	var l Listeners
	var lc net.ListenConfig
	var err error
	if l.TCP, err = lc.Listen(ctx, "tcp", tcp); err != nil {
		return err
	}
	if udp != "" {
		if l.UDP, err = lc.ListenPacket(ctx, "udp", udp); err != nil {
			l.TCP.Close()
			return err
		}
		// Relayed WireGuard traffic comes in bursts (a GSO batch is up to
		// 64 datagrams): the default ~200 KiB buffer drops them.
		if uc, ok := l.UDP.(*net.UDPConn); ok {
			_ = uc.SetReadBuffer(UDPBuffer)
			_ = uc.SetWriteBuffer(UDPBuffer)
		}
	}
	if metricsAddr != "" {
		if l.Metrics, err = lc.Listen(ctx, "tcp", metricsAddr); err != nil {
			l.TCP.Close()
			if l.UDP != nil {
				l.UDP.Close()
			}
			return err
		}
	}
	return s.Serve(ctx, l)
}

// Serve serves on the listeners until ctx ends, then closes them and every
// session, waits for all its goroutines and saves the registry. It closes the
// listeners it was given in every case.
func (s *Server) Serve(ctx context.Context, l Listeners) error {
	s.mu.Lock()
	if s.state != stateNew {
		s.mu.Unlock()
		closeAll(l)
		return ErrState
	}
	s.state = stateRunning
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.log.Info("broker running", "addr", l.TCP.Addr().String(), "key", keys.FormatPublic(s.pub))

	var httpSrv *http.Server
	if l.Metrics != nil {
		httpSrv = &http.Server{Handler: http.HandlerFunc(s.serveMetrics), ReadHeaderTimeout: 5 * time.Second}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := httpSrv.Serve(l.Metrics); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Warn("metrics server", "err", err)
			}
		}()
	}
	s.pc = l.UDP
	if l.UDP != nil {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.serveUDP(ctx, l.UDP) }()
	}
	for _, addr := range s.cfg.PeerBrokers {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.replicaLoop(ctx, addr) }()
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.saveLoop(ctx) }()
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.acceptLoop(ctx, l.TCP) }()

	<-ctx.Done()
	closeAll(l)
	if httpSrv != nil {
		httpSrv.Close()
	}
	s.mu.Lock()
	s.state = stateClosed
	all := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		all = append(all, ss)
	}
	var conns []net.Conn
	for c := range s.open {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, ss := range all {
		ss.close()
	}
	for _, c := range conns { // those still in their handshake
		c.Close()
	}
	s.wg.Wait()
	err := s.saveDirty()
	s.log.Info("broker stopped")
	return err
}

func closeAll(l Listeners) {
	if l.TCP != nil {
		l.TCP.Close()
	}
	if l.UDP != nil {
		l.UDP.Close()
	}
	if l.Metrics != nil {
		l.Metrics.Close()
	}
}

func (s *Server) acceptLoop(ctx context.Context, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("accept", "err", err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return
		}
		src := addrOf(c.RemoteAddr())
		if !s.conns.allow(src.Addr(), 1, s.cfg.Now()) {
			s.metrics.refused("rate")
			c.Close()
			continue
		}
		s.mu.Lock()
		closed := s.state != stateRunning
		if !closed {
			s.open[c] = true
		}
		s.mu.Unlock()
		if closed {
			c.Close()
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { s.mu.Lock(); delete(s.open, c); s.mu.Unlock() }()
			s.serveConn(ctx, c, src)
		}()
	}
}

func addrOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// newID returns a random 64-bit identifier (session and enrollment IDs are
// unique across replicas without coordination).
func newID() uint64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return binary.BigEndian.Uint64(b[:]) | 1
}
