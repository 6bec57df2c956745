package server

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/pion/stun/v4"

	"github.com/pvc-project/pvc/broker/proto"
)

// udpRelay handles a relay datagram: the token names the sending peer's
// session, whose UDP address is then known; an empty datagram registers
// that address and is answered with an empty one.
func (s *Server) udpRelay(b []byte, from net.Addr) {
	u, err := proto.ParseUDPRelay(b)
	if err != nil {
		s.metrics.relayDrops.Add(1)
		return
	}
	s.mu.Lock()
	ss := s.tokens[u.Token]
	s.mu.Unlock()
	if ss == nil {
		s.metrics.relayRefused.Add(1)
		return
	}
	ap := addrOf(from)
	if cur := ss.udp.Load(); cur == nil || *cur != ap {
		ss.udp.Store(&ap)
	}
	if u.Name == "" && len(u.Data) == 0 {
		ack := proto.UDPRelay{Token: ss.token}
		s.pc.WriteTo(ack.Append(nil), from)
		return
	}
	s.relay(ss, &proto.Relay{Cluster: ss.cl.name, From: ss.name, To: u.Name, Data: append([]byte(nil), u.Data...)}, nil)
}

// serveUDP answers STUN binding requests (RFC 5389/8489) with the source
// address as XOR-MAPPED-ADDRESS, so ICE agents can use the broker as a STUN
// server, and relay datagrams (proto.UDPRelay) of authenticated peers.
// Other datagrams are ignored.
func (s *Server) serveUDP(ctx context.Context, pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if proto.IsUDPRelay(buf[:n]) {
			s.udpRelay(buf[:n], from)
			continue
		}
		if !stun.IsMessage(buf[:n]) {
			continue
		}
		req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if err := req.Decode(); err != nil || req.Type != stun.BindingRequest {
			continue
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		resp, err := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: ua.IP, Port: ua.Port}, stun.NewSoftware("pvc-broker"), stun.Fingerprint)
		if err != nil {
			continue
		}
		s.metrics.stunRequests.Add(1)
		pc.WriteTo(resp.Raw, from)
	}
}
