package server

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/enroll"
	"github.com/pvc-project/pvc/security/signed"
)

// enrollWait is an enrollment in flight: whom to answer.
type enrollWait struct {
	to      *session
	cluster string
	expires time.Time
}

// errRole is returned for a message the session's role may not send.
func errRole(ss *session, m proto.Message) error {
	return fmt.Errorf("a %s session may not send %s", ss.role, m.Type())
}

// handle processes one message of an established session; frame is its
// encoding as received. An error closes the session.
func (s *Server) handle(ss *session, m proto.Message, frame []byte) error {
	role := ss.role
	switch m := m.(type) {
	case *proto.Ping:
		ss.send(&proto.Pong{Nonce: m.Nonce}, mustSend)
	case *proto.Pong:
	case *proto.Publish:
		if role == proto.RoleEnrollee {
			return errRole(ss, m)
		}
		ver, _, err := s.accept(m.Object, ss)
		if role == proto.RoleReplica {
			if err != nil {
				s.log.Debug("replica object refused", "from", ss.name, "err", err)
			}
			return nil
		}
		ack := &proto.Ack{Req: m.Req, Version: ver}
		if o, derr := signed.Decode(m.Object); derr == nil {
			ack.Kind, ack.Subject = uint8(o.Kind), o.Subject
		}
		if err != nil {
			ack.Err = err.Error()
		}
		ss.send(ack, mustSend)
	case *proto.Lookup:
		if role != proto.RolePeer && role != proto.RoleMaster {
			return errRole(ss, m)
		}
		if raw := s.lookup(ss.cl, m.By, m.Key); raw != nil {
			ss.send(&proto.Object{Req: m.Req, Object: raw}, mustSend)
		} else {
			ss.send(&proto.Ack{Req: m.Req, Subject: m.Key, Err: "not found"}, mustSend)
		}
	case *proto.Subscribe:
		if role != proto.RolePeer && role != proto.RoleMaster {
			return errRole(ss, m)
		}
		s.mu.Lock()
		ss.push(snapshotLocked(ss.cl)...)
		ss.cl.subs[ss.id] = ss
		s.mu.Unlock()
	case *proto.Signal:
		return s.signal(ss, m, frame)
	case *proto.Relay:
		return s.relay(ss, m, frame)
	case *proto.Enroll:
		if role != proto.RoleEnrollee || ss.enrolled {
			return errRole(ss, m)
		}
		ss.enrolled = true
		return s.enroll(ss, &proto.EnrollForward{ID: newID(), Request: m.Request})
	case *proto.EnrollForward:
		if role != proto.RoleReplica {
			return errRole(ss, m)
		}
		return s.enroll(ss, m)
	case *proto.EnrollResult:
		if role != proto.RoleMaster && role != proto.RoleReplica {
			return errRole(ss, m)
		}
		s.enrollResult(ss, m)
	case *proto.Inventory:
		if role != proto.RoleReplica {
			return errRole(ss, m)
		}
		s.antiEntropy(ss, m)
	default:
		return fmt.Errorf("unexpected %s", m.Type())
	}
	return nil
}

// signal forwards a signal to the destination's session here, or (for a
// signal from a local peer) to the replica links: one hop, never back.
func (s *Server) signal(ss *session, m *proto.Signal, frame []byte) error {
	if ss.role == proto.RolePeer && (m.From != ss.name || m.Cluster != ss.cl.name) {
		s.metrics.signalDrops.Add(1)
		s.log.Debug("forged signal dropped", "session", ss.name, "from", m.From, "cluster", m.Cluster)
		return nil
	}
	if ss.role != proto.RolePeer && ss.role != proto.RoleReplica {
		return errRole(ss, m)
	}
	s.metrics.signals.Add(1)
	s.forward(ss, m.Cluster, m.To, m, frame)
	return nil
}

// forward sends m (whose frame, if not nil, is sent as is) to the
// destination's most recent session here, or to the replica links.
func (s *Server) forward(ss *session, cluster, to string, m proto.Message, frame []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cl := s.clusters[cluster]
	if cl == nil {
		return
	}
	if ps := cl.peers[to]; len(ps) > 0 {
		dst := ps[len(ps)-1] // the most recent session of that peer
		if r, ok := m.(*proto.Relay); ok && s.pc != nil {
			if ap := dst.udp.Load(); ap != nil {
				u := proto.UDPRelay{Token: dst.token, Name: r.From, Data: r.Data}
				if _, err := s.pc.WriteTo(u.Append(nil), net.UDPAddrFromAddrPort(*ap)); err != nil {
					s.metrics.relayDrops.Add(1)
				}
				return
			}
		}
		if !dst.sendFrame(m, frame, dropIfFull) {
			s.metrics.dropped(m)
		}
		return
	}
	if ss.role == proto.RoleReplica {
		s.metrics.dropped(m)
		return
	}
	for _, r := range s.replicas {
		r.sendFrame(m, frame, dropIfFull)
	}
}

// relay forwards a datagram; it refuses revoked senders and enforces the
// sender's byte rate. It never logs per packet.
func (s *Server) relay(ss *session, m *proto.Relay, frame []byte) error {
	switch ss.role {
	case proto.RolePeer:
		if ss.cl == nil {
			return errRole(ss, m)
		}
		if m.From != ss.name || m.Cluster != ss.cl.name {
			s.metrics.relayDrops.Add(1)
			return nil
		}
		if rl := ss.cl.trust().Revocation(); rl.Revoked(ss.serial) {
			s.metrics.relayRefused.Add(1)
			return nil
		}
		if !ss.relay.take(float64(len(m.Data)), s.cfg.Now()) {
			s.metrics.relayDrops.Add(1)
			return nil
		}
	case proto.RoleReplica:
		s.mu.Lock()
		cl := s.clusters[m.Cluster]
		known := cl != nil && cl.objs[objKey{signed.KindCert, m.From}] != nil
		s.mu.Unlock()
		if !known { // unknown or revoked sender
			s.metrics.relayRefused.Add(1)
			return nil
		}
	default:
		return errRole(ss, m)
	}
	s.metrics.relayBytes.Add(uint64(len(m.Data)))
	s.forward(ss, m.Cluster, m.To, m, frame)
	return nil
}

// enroll sends a request to a master session of its cluster, or, for a
// request from a local enrollee, to the replica links.
func (s *Server) enroll(ss *session, f *proto.EnrollForward) error {
	req, err := enroll.Decode(f.Request)
	if err != nil {
		if ss.role == proto.RoleEnrollee {
			ss.closeAfter(&proto.EnrollResult{ID: f.ID, Err: err.Error()})
		}
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss.role == proto.RoleEnrollee && req.Cluster != ss.cl.name {
		ss.closeAfter(&proto.EnrollResult{ID: f.ID, Err: fmt.Sprintf("request for cluster %q on a session of %q", req.Cluster, ss.cl.name)})
		return nil
	}
	cl := s.clusters[req.Cluster]
	if cl == nil {
		return nil
	}
	s.pending[f.ID] = &enrollWait{to: ss, cluster: req.Cluster, expires: s.cfg.Now().Add(s.cfg.Limits.EnrollTimeout)}
	s.metrics.enrolls.Add(1)
	for _, m := range cl.masters {
		if m.send(f, mustSend) {
			return nil
		}
	}
	if ss.role == proto.RoleReplica {
		delete(s.pending, f.ID) // one hop: no master here, stay silent
		return nil
	}
	sent := false
	for _, r := range s.replicas {
		sent = r.send(f, mustSend) || sent
	}
	if !sent {
		delete(s.pending, f.ID)
		ss.closeAfter(&proto.Error{Code: proto.CodeUnavailable, Text: "no master reachable through this broker"})
	}
	return nil
}

func (s *Server) enrollResult(ss *session, m *proto.EnrollResult) {
	s.mu.Lock()
	w := s.pending[m.ID]
	delete(s.pending, m.ID)
	s.mu.Unlock()
	if w == nil {
		return
	}
	if len(m.Cert) > 0 && ss.role == proto.RoleMaster {
		if _, _, err := s.accept(m.Cert, ss); err != nil {
			m = &proto.EnrollResult{ID: m.ID, Err: "master's certificate refused: " + err.Error()}
		}
	}
	if w.to.role == proto.RoleEnrollee {
		w.to.closeAfter(m)
	} else {
		w.to.send(m, mustSend)
	}
}

// expireEnrollments answers enrollments that no master answered in time.
func (s *Server) expireEnrollments() {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, w := range s.pending {
		if now.After(w.expires) {
			delete(s.pending, id)
			if w.to.role == proto.RoleEnrollee {
				w.to.closeAfter(&proto.Error{Code: proto.CodeUnavailable, Text: "no answer from the master in time"})
			}
		}
	}
}

func (s *Server) saveLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.saveDirty(); err != nil {
			s.log.Error("saving registry", "err", err)
		}
		s.expireEnrollments()
	}
}
