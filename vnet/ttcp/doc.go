// Package ttcp implements Traversing-TCP (Rilling et al., the PVC papers):
// a TCP connection to a peer whose firewall drops inbound connections.
//
// The client dials the server's public endpoint with its own kernel stack
// (Dialer.Dial). Its SYN is captured on the way out (iptables NFQUEUE on
// OUTPUT, verdict accept, so that it also opens the client's own NAT and
// firewall state) and described (SYN, a compact versioned encoding) to the
// caller, who carries the description to the server, e.g. as a broker
// signal. The server (Server.Inject) writes the equivalent SYN into a TUN
// device, so that its kernel receives it as if it had crossed the
// firewall, and answers with a SYN/ACK that records the flow in the
// firewall's state; the client's ACK then completes the connection on the
// server's ordinary listener. Inbound RSTs of the flow are dropped at the
// client while it connects.
//
// Both ends return a plain net.Conn: framing and peer authentication
// belong to the caller. docs/traversal.md ("Traversing-TCP") records which
// site kinds it crosses; Crosses is the same table in Go.
//
// It needs CAP_NET_ADMIN and CAP_NET_RAW, /dev/net/tun and iptables:
// Available says what is missing.
package ttcp

import "errors"

// ErrUnavailable is wrapped by the error of Available (and of NewServer and
// Dial) when this process cannot run Traversing-TCP.
var ErrUnavailable = errors.New("traversing-TCP unavailable")
