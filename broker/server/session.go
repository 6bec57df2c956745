package server

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/trust"
)

// session is one authenticated connection: a peer, enrollee, master or
// replica link. Its reader runs in the goroutine that serves the connection;
// its writer drains a bounded queue so that a slow client never blocks the
// broker.
type session struct {
	srv    *Server
	id     uint64
	conn   net.Conn
	remote netip.AddrPort
	role   proto.Role
	cl     *cluster                       // nil for a replica link
	name   string                         // peer name; replica: its key
	serial uint64                         // peer: its certificate's serial
	cert   *cert.Cert                     // peer: its certificate, verified in Auth
	certTS *trust.Store                   // peer: the trust store it was verified against
	relay  *bucket                        // peer: relay byte budget
	token  [proto.IDSize]byte             // peer: its UDP relay token
	udp    atomic.Pointer[netip.AddrPort] // peer: where its UDP relay datagrams come from, or nil

	// The outbound queue, drained by the writer. It is a slice that grows
	// on demand (an idle session holds no queue memory), bounded by
	// Limits.QueueFrames and QueueBytes.
	qmu     sync.Mutex
	frames  [][]byte // encoded frames, in order
	objs    [][]byte // objects to push (subscription), sent in batches before the frames
	qbytes  int      // bytes in frames and objs, and in the batch being written
	closing bool     // close once the queued frames are written
	urgent  bool     // objs holds one that must not wait for a batch
	holding bool     // the writer waits for pushDelay with only objects queued: more objects need not wake it
	wake    chan struct{}
	done    chan struct{}
	once    sync.Once

	enrolled bool // enrollee: its request was sent (reader goroutine only)

	cork *gatedConn // the connection under TLS, which the writer corks for a batch; nil: not corked (replica links)
}

func (s *Server) newSession(c net.Conn, remote netip.AddrPort, role proto.Role) *session {
	return &session{srv: s, id: newID(), conn: c, remote: remote, role: role,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// close ends the session at once. It never takes srv.mu.
func (ss *session) close() {
	ss.once.Do(func() {
		close(ss.done)
		ss.conn.Close()
	})
}

type sendMode int

const (
	mustSend   sendMode = iota // a full queue closes the session
	dropIfFull                 // a full queue drops the frame (relay, signals)
)

// send queues m without blocking. It may be called with srv.mu held.
func (ss *session) send(m proto.Message, mode sendMode) bool {
	if h := ss.srv.cfg.Hook; h != nil && ss.role != proto.RoleReplica {
		if m = h(m); m == nil {
			return true
		}
	}
	f, err := proto.Frame(m)
	if err != nil {
		ss.srv.log.Error("frame to send", "type", m.Type(), "err", err)
		return false
	}
	return ss.enqueue(f, nil, mode)
}

// sendFrame queues m, whose frame f is at hand (a relayed datagram or a
// signal forwarded unchanged), without encoding it again.
func (ss *session) sendFrame(m proto.Message, f []byte, mode sendMode) bool {
	if f == nil || (ss.srv.cfg.Hook != nil && ss.role != proto.RoleReplica) {
		return ss.send(m, mode)
	}
	return ss.enqueue(f, nil, mode)
}

// push queues signed objects for the session's subscription, without
// blocking; the writer sends queued objects in Objects frames of up to
// objectsFrame bytes, before any frame queued after them. A full queue
// closes the session (it must resubscribe). It may be called with srv.mu
// held.
func (ss *session) push(objs ...[]byte) bool {
	return ss.enqueue(nil, objs, mustSend)
}

// pushNow is push for objects that must not wait for a batch (a
// revocation list, a bundle, a policy: rare, and what they change matters
// at once).
func (ss *session) pushNow(obj []byte) bool {
	if !ss.enqueue(nil, [][]byte{obj}, mustSend) {
		return false
	}
	ss.qmu.Lock()
	ss.urgent = true
	ss.qmu.Unlock()
	ss.poke()
	return true
}

// enqueue adds a frame or objects to the queue.
func (ss *session) enqueue(f []byte, objs [][]byte, mode sendMode) bool {
	lim := ss.srv.cfg.Limits
	n := len(f)
	for _, o := range objs {
		n += len(o) + 4
	}
	ss.qmu.Lock()
	if ss.closing {
		ss.qmu.Unlock()
		return false
	}
	if ss.qbytes+n <= lim.QueueBytes && (f == nil || len(ss.frames) < lim.QueueFrames) {
		if f != nil {
			ss.frames = append(ss.frames, f)
		}
		ss.objs = append(ss.objs, objs...)
		ss.qbytes += n
		// Objects for a writer that holds them until its timer need not
		// wake it: a join storm's every certificate would wake every
		// subscriber's writer, only for it to wait again.
		wake := f != nil || !ss.holding
		ss.qmu.Unlock()
		if wake {
			ss.poke()
		}
		return true
	}
	ss.qmu.Unlock()
	if mode == dropIfFull {
		ss.srv.metrics.queueDrops.Add(1)
		return false
	}
	ss.srv.metrics.overflows.Add(1)
	ss.srv.log.Warn("session queue full: closing", "role", ss.role, "name", ss.name, "addr", ss.remote)
	ss.close()
	return false
}

func (ss *session) poke() {
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

// closeAfter queues m and then closes the session once it is written.
func (ss *session) closeAfter(m proto.Message) {
	if !ss.send(m, dropIfFull) {
		ss.close()
		return
	}
	ss.qmu.Lock()
	ss.closing = true
	ss.qmu.Unlock()
	ss.poke()
}

// pushDelay is the least time between two writes of subscription pushes
// alone (see writer).
const pushDelay = 100 * time.Millisecond

// Sizes of the writer's output: queued objects go in Objects frames of up
// to objectsFrame bytes (a client reads a frame whole before it takes
// it: small frames keep its read buffer small and warm), and frames are
// coalesced into writes of up to writeChunk bytes.
const (
	objectsFrame = 32 << 10
	writeChunk   = 256 << 10
)

// writeBufs are the writers' buffers, shared by all sessions: a writer
// holds one only while it encodes and writes a batch, so a join storm's
// thousand subscribers use a few warm buffers rather than one each.
var writeBufs = sync.Pool{New: func() any { b := make([]byte, 0, writeChunk+objectsFrame+64); return &b }}

// writer drains the queue: pending objects first (batched into Objects
// frames), then frames, coalesced into writes of up to writeChunk bytes.
//
// Pushes alone go at most once per pushDelay: the first at once, then,
// while objects keep coming (1,000 peers joining at once), one write of
// many objects per pushDelay instead of one write per object per
// subscriber. For pushDelay after it wrote objects the writer holds: new
// objects do not wake it, its timer does (one wake per write, not one per
// object: a join storm's every certificate woke the thousand writers,
// which flooded the run queues that a signal's goroutines wait in). A
// frame (signal, relay, answer), an urgent object or closing wakes it at
// once, and goes with whatever objects are queued.
func (ss *session) writer() {
	defer ss.close()
	var objs, frames [][]byte // reused between batches
	var lastObjs time.Time    // when objects were last written
	hold := time.NewTimer(time.Hour)
	hold.Stop()
	defer hold.Stop()
	for {
		ss.qmu.Lock()
		left := pushDelay - time.Since(lastObjs)
		due := len(ss.frames) > 0 || ss.closing || (len(ss.objs) > 0 && (left <= 0 || ss.urgent))
		if !due {
			ss.holding = left > 0
			ss.qmu.Unlock()
			if left > 0 {
				hold.Reset(left)
			}
			select {
			case <-ss.wake:
			case <-hold.C:
			case <-ss.done:
				return
			}
			hold.Stop()
			continue
		}
		ss.holding = false
		objs, ss.objs = ss.objs, objs[:0]
		frames, ss.frames = ss.frames, frames[:0]
		ss.urgent = false
		closing := ss.closing
		ss.qmu.Unlock()
		if len(objs) == 0 && len(frames) == 0 && closing {
			return // everything queued before closeAfter is written
		}
		if !ss.writeBatch(objs, frames) {
			return
		}
		if len(objs) > 0 {
			lastObjs = time.Now()
		}
		clear(objs) // drop the references to registry bytes
		clear(frames)
		if cap(objs) > 1024 {
			objs = nil // a snapshot's worth: let it go
		}
		if cap(frames) > 1024 {
			frames = nil
		}
	}
}

// writeBatch encodes objects (in Objects frames) and frames into a shared
// buffer and writes them; false if the connection failed.
func (ss *session) writeBatch(objs, frames [][]byte) bool {
	bp := writeBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	defer func() {
		if cap(buf) <= writeChunk+objectsFrame+64 {
			*bp = buf[:0]
			writeBufs.Put(bp)
		}
	}()
	queued := 0
	flush := func() bool {
		if len(buf) == 0 {
			return true
		}
		ok := ss.write(buf)
		buf = buf[:0]
		return ok
	}
	hook := ss.srv.cfg.Hook
	if ss.role == proto.RoleReplica {
		hook = nil
	}
	for i := 0; i < len(objs); {
		// One frame: objects up to objectsFrame bytes, at least one.
		j, size := i, 0
		for j < len(objs) && j-i < proto.MaxObjects && (j == i || size+len(objs[j])+4 <= objectsFrame) {
			size += len(objs[j]) + 4
			j++
		}
		queued += size
		if hook != nil {
			if m := hook(&proto.Objects{Objects: objs[i:j]}); m != nil {
				buf = proto.AppendFrame(buf, m)
			}
		} else {
			buf = proto.AppendObjectsFrame(buf, objs[i:j])
		}
		i = j
		if len(buf) >= writeChunk && !flush() {
			return false
		}
	}
	for _, f := range frames {
		queued += len(f)
		buf = append(buf, f...)
		if len(buf) >= writeChunk && !flush() {
			return false
		}
	}
	if !flush() {
		return false
	}
	ss.qmu.Lock()
	ss.qbytes -= queued
	ss.qmu.Unlock()
	return true
}

func (ss *session) write(b []byte) bool {
	ss.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if ss.cork != nil {
		ss.cork.cork()
	}
	_, err := ss.conn.Write(b)
	if ss.cork != nil {
		if ferr := ss.cork.flush(); err == nil {
			err = ferr
		}
	}
	return err == nil
}

// refusal is an authentication failure: what the client is told and the
// short reason counted in the metrics.
type refusal struct {
	reason string
	err    error
}

func (r *refusal) Error() string { return r.err.Error() }

func refuse(reason string, format string, args ...any) *refusal {
	return &refusal{reason: reason, err: fmt.Errorf(format, args...)}
}

func certReason(err error) string {
	switch {
	case errors.Is(err, cert.ErrWrongSigner):
		return "other-master"
	case errors.Is(err, cert.ErrOtherCluster):
		return "other-cluster"
	case errors.Is(err, cert.ErrRevoked):
		return "revoked"
	case errors.Is(err, cert.ErrExpired):
		return "expired"
	case errors.Is(err, cert.ErrNotYetValid):
		return "not-yet-valid"
	case errors.Is(err, cert.ErrBadSignature):
		return "bad-signature"
	}
	return "invalid"
}

// serveConn runs the handshake, then the session's reader; it returns when
// the session ends.
func (s *Server) serveConn(ctx context.Context, c net.Conn, src netip.AddrPort) {
	lim := s.cfg.Limits
	gc := s.setups.gated(c)
	defer gc.release()
	tc := tls.Server(gc, s.tls)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(lim.HandshakeTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		s.log.Info(fmt.Sprintf("tls handshake failed from %s: %v", src, err))
		return
	}
	m, err := proto.ReadMessage(tc)
	if err != nil {
		return
	}
	hello, ok := m.(*proto.Hello)
	if !ok || hello.Version != proto.Version || !hello.Role.Valid() {
		s.metrics.refused("protocol")
		proto.WriteMessage(tc, &proto.Error{Code: proto.CodeProtocol, Text: fmt.Sprintf("want hello of protocol version %d", proto.Version)})
		return
	}
	s.mu.Lock()
	full := s.nsess >= lim.MaxSessions
	if !full {
		s.nsess++
	}
	s.mu.Unlock()
	if full {
		s.metrics.refused("limit")
		s.log.Warn(fmt.Sprintf("refused %s from %s: too many sessions", hello.Role, src))
		proto.WriteMessage(tc, &proto.Error{Code: proto.CodeLimit, Text: "broker full: too many sessions"})
		return
	}
	defer func() { s.mu.Lock(); s.nsess--; s.mu.Unlock() }()
	if hello.Role == proto.RoleEnrollee && !s.enrolls.allow(src.Addr(), 1, s.cfg.Now()) {
		s.metrics.refused("rate")
		s.log.Warn(fmt.Sprintf("refused enrollee from %s: enrollment rate limit", src))
		proto.WriteMessage(tc, &proto.Error{Code: proto.CodeLimit, Text: "enrollment rate limit: try later"})
		return
	}
	ch := &proto.Challenge{Observed: src.String()}
	rand.Read(ch.Nonce[:])
	if err := proto.WriteMessage(tc, ch); err != nil {
		return
	}
	if m, err = proto.ReadMessage(tc); err != nil {
		return
	}
	auth, ok := m.(*proto.Auth)
	if !ok {
		s.metrics.refused("protocol")
		proto.WriteMessage(tc, &proto.Error{Code: proto.CodeProtocol, Text: "want auth"})
		return
	}
	exp, err := proto.Exporter(tc.ConnectionState())
	if err != nil {
		return
	}
	ss := s.newSession(tc, src, hello.Role)
	ss.cork = gc
	signed := proto.AuthMessage(hello.Role, hello.Cluster, ch.Nonce[:], s.pub, exp)
	if rf := s.authenticate(ss, hello, auth, signed); rf != nil {
		s.metrics.refused(rf.reason)
		who := ss.name
		if who == "" {
			who = "?"
		}
		s.log.Warn(fmt.Sprintf("refused %s %s from %s: %s", hello.Role, who, src, rf.err),
			"reason", rf.reason, "cluster", hello.Cluster)
		proto.WriteMessage(tc, &proto.Error{Code: proto.CodeRefused, Text: "refused: " + rf.err.Error()})
		return
	}
	if err := s.register(ss); err != nil {
		proto.WriteMessage(tc, &proto.Error{Code: proto.CodeLimit, Text: err.Error()})
		return
	}
	defer s.unregister(ss)
	tc.SetDeadline(time.Time{})
	if err := proto.WriteMessage(tc, &proto.Welcome{Session: ss.id, Time: s.cfg.Now().UnixNano(), RelayToken: ss.token}); err != nil {
		return
	}
	gc.release()
	s.log.Info("session", "role", ss.role, "name", ss.name, "cluster", hello.Cluster, "addr", src)
	if ss.role == proto.RolePeer {
		// A verified certificate is a registry object like any other: a
		// peer's session makes sure the registry holds it.
		if _, _, err := s.accept(auth.Credential, ss); err != nil {
			s.log.Debug("storing the certificate of a session", "name", ss.name, "err", err)
		}
	}
	s.runSession(ss)
}

// runSession runs the writer and the reader of an established session until
// it ends.
func (s *Server) runSession(ss *session) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); ss.writer() }()
	defer wg.Wait()
	defer ss.close()
	if ss.role == proto.RoleReplica {
		s.sendInventory(ss)
	}
	idle := s.cfg.Limits.IdleTimeout
	for {
		ss.conn.SetReadDeadline(time.Now().Add(idle))
		f, err := proto.ReadRawFrame(ss.conn)
		if err != nil {
			return
		}
		m, err := proto.Unmarshal(proto.Type(f[0]), f[proto.HeaderSize:])
		if err == nil {
			err = s.handle(ss, m, f)
		}
		if err != nil {
			s.log.Info("closing session", "role", ss.role, "name", ss.name, "addr", ss.remote, "err", err)
			ss.closeAfter(&proto.Error{Code: proto.CodeProtocol, Text: err.Error()})
			return
		}
	}
}

func (s *Server) authenticate(ss *session, h *proto.Hello, a *proto.Auth, msg []byte) *refusal {
	if h.Role == proto.RoleReplica {
		key := ed25519.PublicKey(a.Credential)
		if len(key) != ed25519.PublicKeySize || !s.knownBroker(key) {
			return refuse("unknown-replica", "replica key is pinned in no bundle this broker serves")
		}
		ss.name = keys.FormatPublic(key)
		if !ed25519.Verify(key, msg, a.Sig) {
			return refuse("bad-signature", "bad auth signature")
		}
		return nil
	}
	s.mu.Lock()
	cl := s.clusters[h.Cluster]
	s.mu.Unlock()
	if h.Role == proto.RoleMaster && len(a.Credential) > ed25519.PublicKeySize {
		// A master presents its signed bundle: a bundle that names this
		// broker's key registers the cluster here (only the master's key
		// can make one), and a newer one updates it.
		b, err := bundle.Decode(a.Credential)
		if err != nil || b.Cluster != h.Cluster || !ed25519.Verify(b.MasterKey, msg, a.Sig) {
			return refuse("bad-bundle", "master credential: not a valid bundle of cluster %q signed by its master", h.Cluster)
		}
		if _, err := s.addBundle(a.Credential, false); err != nil {
			return refuse("unknown-cluster", "master credential: %v", err)
		}
		s.mu.Lock()
		cl = s.clusters[h.Cluster]
		s.mu.Unlock()
		a.Credential = b.MasterKey
	}
	if h.Role == proto.RolePeer {
		if c, err := cert.Decode(a.Credential); err == nil {
			ss.name = c.Name
		}
	}
	if cl == nil {
		return refuse("unknown-cluster", "this broker serves no cluster %q", h.Cluster)
	}
	ss.cl = cl
	switch h.Role {
	case proto.RolePeer:
		ts := cl.trust()
		c, err := ts.VerifyCert(a.Credential, s.cfg.Now())
		if err != nil {
			return &refusal{reason: certReason(err), err: err}
		}
		ss.cert, ss.certTS = c, ts
		if !ed25519.Verify(c.SignKey, msg, a.Sig) {
			return refuse("bad-signature", "bad auth signature for %q", c.Name)
		}
		ss.name, ss.serial = c.Name, c.Serial
		ss.relay = newBucket(s.cfg.Limits.RelayRate, s.cfg.Now())
		rand.Read(ss.token[:])
	case proto.RoleMaster:
		mk := cl.trust().Bundle().MasterKey
		ss.name = "master"
		if !bytes.Equal(a.Credential, mk) {
			return refuse("other-master", "not the master key of cluster %q", h.Cluster)
		}
		if !ed25519.Verify(mk, msg, a.Sig) {
			return refuse("bad-signature", "bad auth signature")
		}
	case proto.RoleEnrollee:
		if len(a.Credential) != 0 || len(a.Sig) != 0 {
			return refuse("protocol", "an enrollee sends no credential")
		}
	}
	return nil
}

func (s *Server) register(ss *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stateRunning {
		return errors.New("broker shutting down")
	}
	s.sessions[ss.id] = ss
	s.metrics.sessions[ss.role].Add(1)
	switch ss.role {
	case proto.RolePeer:
		ss.cl.peers[ss.name] = append(ss.cl.peers[ss.name], ss)
		s.tokens[ss.token] = ss
	case proto.RoleMaster:
		ss.cl.masters[ss.id] = ss
	case proto.RoleReplica:
		s.replicas[ss.id] = ss
	}
	return nil
}

func (s *Server) unregister(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, ss.id)
	if s.tokens[ss.token] == ss {
		delete(s.tokens, ss.token)
	}
	delete(s.replicas, ss.id)
	s.metrics.sessions[ss.role].Add(-1)
	if cl := ss.cl; cl != nil {
		if ps := slices.DeleteFunc(cl.peers[ss.name], func(x *session) bool { return x == ss }); len(ps) > 0 {
			cl.peers[ss.name] = ps
		} else {
			delete(cl.peers, ss.name)
		}
		delete(cl.masters, ss.id)
		delete(cl.subs, ss.id)
	}
	for id, w := range s.pending {
		if w.to == ss {
			delete(s.pending, id)
		}
	}
}
