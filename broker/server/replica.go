package server

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/signed"
)

// replicaLoop keeps a replica link to addr, redialling with backoff.
func (s *Server) replicaLoop(ctx context.Context, addr string) {
	lim := s.cfg.Limits
	wait := lim.ReplicaRetry
	for ctx.Err() == nil {
		start := time.Now()
		err := s.dialReplica(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			wait = lim.ReplicaRetry
		}
		s.log.Info("replica link down", "addr", addr, "err", err, "retry", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// dialReplica opens one replica link and serves it until it ends.
func (s *Server) dialReplica(ctx context.Context, addr string) error {
	lim := s.cfg.Limits
	d := net.Dialer{Timeout: lim.HandshakeTimeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	pinned := s.pinnedKey(addr)
	tc := tls.Client(raw, proto.ClientTLS(pinned))
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(lim.HandshakeTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("replica %s: %w", addr, err)
	}
	cs := tc.ConnectionState()
	theirs, err := proto.PeerKey(cs)
	if err != nil {
		return err
	}
	if theirs.Equal(s.pub) {
		return fmt.Errorf("replica %s is this broker", addr)
	}
	if err := proto.WriteMessage(tc, &proto.Hello{Version: proto.Version, Role: proto.RoleReplica}); err != nil {
		return err
	}
	m, err := proto.ReadMessage(tc)
	if err != nil {
		return err
	}
	ch, ok := m.(*proto.Challenge)
	if !ok {
		return fmt.Errorf("replica %s: %v", addr, m)
	}
	exp, err := proto.Exporter(cs)
	if err != nil {
		return err
	}
	msg := proto.AuthMessage(proto.RoleReplica, "", ch.Nonce[:], theirs, exp)
	if err := proto.WriteMessage(tc, &proto.Auth{Credential: s.pub, Sig: ed25519.Sign(s.key, msg)}); err != nil {
		return err
	}
	if m, err = proto.ReadMessage(tc); err != nil {
		return err
	}
	if e, ok := m.(*proto.Error); ok {
		return fmt.Errorf("replica %s refused the link: %s", addr, e.Text)
	}
	if _, ok := m.(*proto.Welcome); !ok {
		return fmt.Errorf("replica %s: unexpected %s", addr, m.Type())
	}
	tc.SetDeadline(time.Time{})
	ss := s.newSession(tc, addrOf(tc.RemoteAddr()), proto.RoleReplica)
	ss.name = addr
	if err := s.register(ss); err != nil {
		return err
	}
	defer s.unregister(ss)
	s.log.Info("replica link up", "addr", addr)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(lim.Keepalive)
		defer t.Stop()
		for {
			select {
			case <-ss.done:
				return
			case <-t.C:
				ss.send(&proto.Ping{Nonce: uint64(time.Now().UnixNano())}, mustSend)
			}
		}
	}()
	s.runSession(ss)
	wg.Wait()
	return nil
}

// sendInventory tells a replica what this broker holds.
func (s *Server) sendInventory(ss *session) {
	inv := &proto.Inventory{}
	s.mu.Lock()
	for name, c := range s.clusters {
		for k, e := range c.objs {
			inv.Entries = append(inv.Entries, proto.InvEntry{Cluster: name, Kind: uint8(k.kind), Subject: k.subject, Version: e.version})
		}
	}
	s.mu.Unlock()
	// One frame: the other side compares against the whole list. About
	// 30,000 entries fit; beyond that the link fails and the log says so.
	ss.send(inv, mustSend)
}

// antiEntropy publishes to a replica what it lacks or holds older. Objects
// go in snapshot order (bundle and revocation list before certificates), so
// the other side can verify each.
func (s *Server) antiEntropy(ss *session, inv *proto.Inventory) {
	type ck struct {
		cluster string
		objKey
	}
	theirs := make(map[ck]uint64, len(inv.Entries))
	for _, e := range inv.Entries {
		theirs[ck{e.Cluster, objKey{signed.Kind(e.Kind), e.Subject}}] = e.Version
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, c := range s.clusters {
		for _, raw := range snapshotLocked(c) {
			o, err := signed.Decode(raw)
			if err != nil {
				continue
			}
			if v, ok := theirs[ck{name, objKey{o.Kind, o.Subject}}]; ok && v >= o.Version {
				continue
			}
			ss.send(&proto.Publish{Object: raw}, mustSend)
		}
	}
}
