package client

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/bundle"
)

// session is one TLS session with one broker.
type session struct {
	addr     string
	conn     *tls.Conn
	observed netip.AddrPort
	token    [proto.IDSize]byte // UDP relay token from Welcome
	udp      *net.UDPConn       // UDP relay socket (Config.UDP), or nil
	udpOK    atomic.Bool        // the broker confirmed our UDP address

	out  chan []byte
	done chan struct{}
	once sync.Once

	mu      sync.Mutex
	nextReq uint32
	pending map[uint32]chan proto.Message
}

const handshakeTimeout = 10 * time.Second

// dial opens a session: TCP, TLS with the broker's pinned key, Hello,
// Challenge, Auth signed with key, Welcome. cred is the peer's certificate
// (a master sends its public key, an enrollee nothing).
func dial(ctx context.Context, dialer Dialer, b bundle.Broker, role proto.Role, cluster string, cred []byte, key ed25519.PrivateKey, queue int) (*session, error) {
	if b.Key == nil {
		return nil, fmt.Errorf("broker %s: no pinned key in the cluster bundle", b.Addr)
	}
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	if dialer == nil {
		var d net.Dialer
		dialer = d.DialContext
	}
	raw, err := dialer(ctx, "tcp", b.Addr)
	if err != nil {
		return nil, fmt.Errorf("broker %s: %w", b.Addr, err)
	}
	tc := tls.Client(raw, proto.ClientTLS(b.Key))
	ok := false
	defer func() {
		if !ok {
			tc.Close()
		}
	}()
	if dl, has := ctx.Deadline(); has {
		tc.SetDeadline(dl)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("broker %s: %w", b.Addr, err)
	}
	if err := proto.WriteMessage(tc, &proto.Hello{Version: proto.Version, Role: role, Cluster: cluster}); err != nil {
		return nil, fmt.Errorf("broker %s: %w", b.Addr, err)
	}
	m, err := readExpect[*proto.Challenge](tc, b.Addr)
	if err != nil {
		return nil, err
	}
	exp, err := proto.Exporter(tc.ConnectionState())
	if err != nil {
		return nil, err
	}
	auth := &proto.Auth{}
	switch role {
	case proto.RolePeer:
		auth.Credential = cred
	case proto.RoleMaster:
		// The signed bundle: a broker that does not serve the cluster yet
		// learns it from this, if the bundle names the broker's key.
		auth.Credential = cred
		if len(cred) == 0 {
			auth.Credential = key.Public().(ed25519.PublicKey)
		}
	}
	if role != proto.RoleEnrollee {
		auth.Sig = ed25519.Sign(key, proto.AuthMessage(role, cluster, m.Nonce[:], b.Key, exp))
	}
	if err := proto.WriteMessage(tc, auth); err != nil {
		return nil, fmt.Errorf("broker %s: %w", b.Addr, err)
	}
	w, err := readExpect[*proto.Welcome](tc, b.Addr)
	if err != nil {
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	ok = true
	s := &session{addr: b.Addr, conn: tc, out: make(chan []byte, queue), done: make(chan struct{}),
		pending: map[uint32]chan proto.Message{}}
	s.observed, _ = netip.ParseAddrPort(m.Observed)
	s.token = w.RelayToken
	return s, nil
}

// readExpect reads one message of type T; an Error frame becomes ErrRefused.
func readExpect[T proto.Message](c net.Conn, addr string) (T, error) {
	var zero T
	m, err := proto.ReadMessage(c)
	if err != nil {
		return zero, fmt.Errorf("broker %s: %w", addr, err)
	}
	if e, ok := m.(*proto.Error); ok {
		return zero, fmt.Errorf("broker %s: %w: %s", addr, ErrRefused, e.Text)
	}
	t, ok := m.(T)
	if !ok {
		return zero, fmt.Errorf("broker %s: unexpected %s", addr, m.Type())
	}
	return t, nil
}

func (s *session) close() {
	s.once.Do(func() {
		close(s.done)
		s.conn.Close()
		if s.udp != nil {
			s.udp.Close()
		}
	})
}

// register sends an empty relay datagram: the broker learns (or refreshes)
// our UDP address and answers with an empty one.
func (s *session) register() {
	u := proto.UDPRelay{Token: s.token}
	s.udp.Write(u.Append(nil))
}

// readUDP delivers relay datagrams that carry this session's token.
func (s *session) readUDP(deliver func(from string, data []byte)) {
	buf := make([]byte, proto.MaxRelay+512)
	for {
		n, err := s.udp.Read(buf)
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		u, err := proto.ParseUDPRelay(buf[:n])
		if err != nil || u.Token != s.token {
			continue
		}
		if u.Name == "" && len(u.Data) == 0 {
			s.udpOK.Store(true)
			continue
		}
		deliver(u.Name, u.Data)
	}
}

// pooledFrame is the largest Objects frame read into a shared buffer
// (the broker sends frames of up to 32 KiB).
const pooledFrame = 64 << 10

// readBufs are the buffers Objects frames are read into, shared by the
// sessions of a process: a session holds one only while it reads and
// takes a frame.
var readBufs = sync.Pool{New: func() any { b := make([]byte, pooledFrame); return &b }}

// run serves the session: a writer, a keepalive and the reader (here) until
// the session fails or ctx ends. handle gets every message but Ping, Pong
// and answers to requests; objects, if not nil, gets the objects of
// Objects frames instead, borrowed from the read buffer (valid only during
// the call).
func (s *session) run(ctx context.Context, keepalive, idle time.Duration, handle func(*session, proto.Message) error, objects func(*session, [][]byte)) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer s.close()
	wg.Add(2)
	go func() { defer wg.Done(); s.writer() }()
	go func() {
		defer wg.Done()
		t := time.NewTicker(keepalive)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				s.close()
				return
			case <-s.done:
				return
			case <-t.C:
				s.trySend(&proto.Ping{Nonce: uint64(time.Now().UnixNano())})
			}
		}
	}()
	defer s.failPending()
	var small []byte  // other frames up to 16 KiB are read into it (decoders copy what they keep)
	var objs [][]byte // the objects of the last Objects frame, the slice reused
	for {
		s.conn.SetReadDeadline(time.Now().Add(idle))
		t, n, err := proto.ReadHeader(s.conn)
		if err == nil && t == proto.TypeObjects && objects != nil && n <= pooledFrame {
			// A subscription's frames, the largest and most frequent
			// (thousands in a join storm): read into a shared buffer, the
			// objects borrowed from it; the handler copies what it keeps.
			bp := readBufs.Get().(*[]byte)
			p := (*bp)[:n]
			if err = proto.ReadPayload(s.conn, p); err == nil {
				if objs, err = proto.UnmarshalObjectsBorrowed(objs, p); err == nil {
					objects(s, objs)
				}
			}
			clear(objs) // no reference into the pooled buffer
			readBufs.Put(bp)
			if err == nil {
				continue
			}
		}
		var p []byte
		if err == nil {
			if p = small[:0]; n > cap(p) {
				p = make([]byte, 0, max(n, 512))
				if n <= 16<<10 {
					small = p // kept: a session that only ever reads Objects frames holds none
				}
			}
			p = p[:n]
			err = proto.ReadPayload(s.conn, p)
		}
		var m proto.Message
		if err == nil {
			m, err = proto.Unmarshal(t, p)
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		switch m := m.(type) {
		case *proto.Ping:
			s.trySend(&proto.Pong{Nonce: m.Nonce})
		case *proto.Pong:
		case *proto.Ack:
			s.answer(m.Req, m)
		case *proto.Object:
			s.answer(m.Req, m)
		default:
			if err := handle(s, m); err != nil {
				return err
			}
		}
	}
}

// writer writes queued frames, coalescing those already waiting into one
// write of up to 64 KiB (one TLS record and system call for a burst of
// relayed datagrams instead of one each).
func (s *session) writer() {
	defer s.close()
	var buf []byte
	for {
		select {
		case f := <-s.out:
			buf = append(buf[:0], f...)
		more:
			for len(buf) < 64<<10 {
				select {
				case g := <-s.out:
					buf = append(buf, g...)
				default:
					break more
				}
			}
			s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := s.conn.Write(buf); err != nil {
				return
			}
			if cap(buf) > 256<<10 {
				buf = nil
			}
		case <-s.done:
			return
		}
	}
}

// trySend queues m without blocking; false if the queue is full or closed.
func (s *session) trySend(m proto.Message) bool {
	f, err := proto.Frame(m)
	if err != nil {
		return false
	}
	select {
	case s.out <- f:
		return true
	case <-s.done:
	default:
	}
	return false
}

// send queues m, waiting for room.
func (s *session) send(m proto.Message) error { return s.sendCtx(context.Background(), m) }

func (s *session) sendCtx(ctx context.Context, m proto.Message) error {
	f, err := proto.Frame(m)
	if err != nil {
		return err
	}
	select {
	case s.out <- f:
		return nil
	case <-s.done:
		return ErrClientClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// request sends a Publish or Lookup and waits for its answer.
func (s *session) request(ctx context.Context, m proto.Message) (proto.Message, error) {
	ch := make(chan proto.Message, 1)
	s.mu.Lock()
	if s.pending == nil {
		s.mu.Unlock()
		return nil, ErrClientClosed
	}
	s.nextReq++
	id := s.nextReq
	s.pending[id] = ch
	s.mu.Unlock()
	defer func() { s.mu.Lock(); delete(s.pending, id); s.mu.Unlock() }()
	switch m := m.(type) {
	case *proto.Publish:
		m.Req = id
	case *proto.Lookup:
		m.Req = id
	}
	if err := s.sendCtx(ctx, m); err != nil {
		return nil, err
	}
	select {
	case a, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("broker %s: %w", s.addr, ErrClientClosed)
		}
		return a, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *session) answer(id uint32, m proto.Message) {
	s.mu.Lock()
	ch := s.pending[id]
	delete(s.pending, id)
	s.mu.Unlock()
	if ch != nil {
		ch <- m
	}
}

func (s *session) failPending() {
	s.mu.Lock()
	for id, ch := range s.pending {
		close(ch)
		delete(s.pending, id)
	}
	s.pending = nil
	s.mu.Unlock()
}
