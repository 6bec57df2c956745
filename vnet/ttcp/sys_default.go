//go:build !linux

package ttcp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
)

// Available reports that Traversing-TCP needs Linux.
func Available() error {
	return fmt.Errorf("%w: needs Linux (NFQUEUE, TUN), not %s", ErrUnavailable, runtime.GOOS)
}

// ServerConfig configures a Server (Linux only).
type ServerConfig struct {
	TUN      string
	OpenTTL  uint8
	Iptables string
}

// Server is not available off Linux.
type Server struct{}

// NewServer fails off Linux.
func NewServer(ServerConfig) (*Server, error) { return nil, Available() }

// Inject fails off Linux.
func (*Server) Inject(SYN, netip.AddrPort) error { return Available() }

// Close does nothing.
func (*Server) Close() error { return nil }

// Dialer is not available off Linux.
type Dialer struct {
	Public        netip.Addr
	Queue, Queues uint16
	Iptables      string
}

// Dial fails off Linux.
func (*Dialer) Dial(context.Context, netip.AddrPort, func(context.Context, SYN) error) (net.Conn, error) {
	return nil, Available()
}

// RemoveStale needs Linux.
func RemoveStale(string) (int, error) { return 0, Available() }
