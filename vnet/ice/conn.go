package ice

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// sharedConn is the net.PacketConn the ICE mux reads and writes: reads are
// the STUN packets the Bind hands over, writes leave from the Bind's
// socket. So every check, keepalive and STUN request uses WireGuard's port
// and its NAT mapping.
type sharedConn struct {
	port uint16
	send func([]byte, netip.AddrPort) error
	in   chan packet

	once   sync.Once
	closed chan struct{}
}

type packet struct {
	b    []byte
	from netip.AddrPort
}

func newSharedConn(port uint16, send func([]byte, netip.AddrPort) error) *sharedConn {
	return &sharedConn{port: port, send: send, in: make(chan packet, 256), closed: make(chan struct{})}
}

// input queues a copy of pkt; a full queue drops it, as a socket would.
func (c *sharedConn) input(pkt []byte, from netip.AddrPort) {
	select {
	case c.in <- packet{append([]byte(nil), pkt...), from}:
	case <-c.closed:
	default:
	}
}

func (c *sharedConn) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case pk := <-c.in:
		n := copy(p, pk.b)
		return n, net.UDPAddrFromAddrPort(pk.from), nil
	case <-c.closed:
		return 0, nil, net.ErrClosed
	}
}

func (c *sharedConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, &net.AddrError{Err: "not a UDP address", Addr: addr.String()}
	}
	ap := ua.AddrPort()
	if err := c.send(p, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *sharedConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *sharedConn) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4zero, Port: int(c.port)}
}

func (c *sharedConn) SetDeadline(time.Time) error      { return nil }
func (c *sharedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *sharedConn) SetWriteDeadline(time.Time) error { return nil }
