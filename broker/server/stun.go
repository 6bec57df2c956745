package server

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/pion/stun/v4"
)

// serveUDP answers STUN binding requests (RFC 5389/8489) with the source
// address as XOR-MAPPED-ADDRESS, so ICE agents can use the broker as a STUN
// server. Other datagrams are ignored (UDP relay is not built yet).
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
