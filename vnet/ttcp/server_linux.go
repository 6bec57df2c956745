//go:build linux

package ttcp

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ServerConfig configures a Server. The zero value works.
type ServerConfig struct {
	// TUN names the device that injected SYNs are written into; "":
	// DefaultTUN. One per network namespace.
	TUN string
	// OpenTTL, when not 0, makes Inject first send a bare SYN with this
	// TTL from the local endpoint toward the client's public endpoint, so
	// that a router in front of the server (NAT or firewall) records the
	// flow as outbound before the client's retransmitted SYN arrives. It
	// must be large enough to leave the server's own routers and should be
	// too small to reach the client (2 behind one router). 0: none.
	OpenTTL uint8
	// Iptables is the iptables program; "": "iptables".
	Iptables string
	// Addr, if valid, is given to the TUN device (e.g. the host's overlay
	// address as a /32). The kernel's reverse-path filter drops every packet
	// that arrives on an interface without an address unless the filter is
	// off (conf/all and the device's rp_filter both 0); with an address,
	// loose mode (2), which NewServer sets on the device, lets the injected
	// SYN in whatever conf/all says. Zero: no address; NewServer then fails
	// unless conf/all/rp_filter is 0.
	Addr netip.Prefix
}

// DefaultTUN is the name of the injection device.
const DefaultTUN = "pvcttcp0"

// Server injects described SYNs into the local IP stack. The listening
// socket is the caller's ordinary TCP listener; the connection appears
// there as an accepted net.Conn.
type Server struct {
	cfg  ServerConfig
	ns   *os.File // the namespace the server was made in (for Close)
	tun  int      // TUN file descriptor
	raw  int      // raw IPv4 socket (IP_HDRINCL), -1 without OpenTTL
	rule rule

	mu     sync.Mutex // guards closed
	closed bool
}

// NewServer creates the TUN device (up, no address, loose reverse-path
// filtering) and a firewall rule that accepts SYNs arriving on it, in the
// calling thread's network namespace.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.TUN == "" {
		cfg.TUN = DefaultTUN
	}
	if cfg.Iptables == "" {
		cfg.Iptables = "iptables"
	}
	if err := available(cfg.Iptables); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, tun: -1, raw: -1}
	ok := false
	defer func() {
		if !ok {
			s.closeLocked(false)
		}
	}()
	var err error
	if s.ns, err = threadNS(); err != nil {
		return nil, fmt.Errorf("ttcp server: %w", err)
	}
	if s.tun, err = openTUN(cfg.TUN); err != nil {
		return nil, fmt.Errorf("ttcp server: TUN %s: %w", cfg.TUN, err)
	}
	if err := setRPFilter(cfg.TUN, cfg.Addr); err != nil {
		return nil, fmt.Errorf("ttcp server: %w", err)
	}
	if cfg.OpenTTL > 0 {
		if s.raw, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
			return nil, fmt.Errorf("ttcp server: raw socket: %w", err)
		}
	}
	s.rule = rule{table: "filter", chain: "INPUT", spec: []string{"-i", cfg.TUN, "-p", "tcp", "--syn",
		"-m", "comment", "--comment", "pvc-ttcp injected SYN", "-j", "ACCEPT"}}
	if err := addRule(cfg.Iptables, s.rule); err != nil {
		s.rule = rule{}
		return nil, fmt.Errorf("ttcp server: %w", err)
	}
	ok = true
	return s, nil
}

// setRPFilter lets packets from any source in on the TUN device. The
// kernel applies the larger of conf/all and the device's value; loose mode
// (2) only accepts on a device that has an address.
func setRPFilter(dev string, addr netip.Prefix) error {
	mode := "0"
	if addr.IsValid() {
		link, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		a, err := netlink.ParseAddr(addr.String())
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(link, a); err != nil {
			return fmt.Errorf("address %v on %s: %w", addr, dev, err)
		}
		mode = "2"
	} else {
		all, err := os.ReadFile("/proc/sys/net/ipv4/conf/all/rp_filter")
		if err != nil {
			return err
		}
		if v := strings.TrimSpace(string(all)); v != "0" {
			return fmt.Errorf("%w: net.ipv4.conf.all.rp_filter is %s, which drops SYNs injected on a device without an address: give it one (ServerConfig.Addr)", ErrUnavailable, v)
		}
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+dev+"/rp_filter", []byte(mode), 0o644); err != nil {
		return fmt.Errorf("rp_filter on %s: %w", dev, err)
	}
	return nil
}

func openTUN(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETIFF: %w", err)
	}
	link, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("set %s up: %w", name, err)
	}
	return fd, nil
}

// ErrClosed is returned by the methods of a closed Server.
var ErrClosed = errors.New("ttcp: server closed")

// Inject makes the local stack receive the SYN that d describes, addressed
// to local (the address and port the server's listener is bound to, which
// behind a NAT differs from d.Dst). The kernel answers with a SYN/ACK from
// local to d.Src, which records the flow in the host's firewall; the
// client's ACK then completes the connection on the listener. With
// OpenTTL, a low-TTL SYN toward d.Src leaves first.
func (s *Server) Inject(d SYN, local netip.AddrPort) error {
	if err := d.Validate(); err != nil {
		return err
	}
	if !local.Addr().Is4() || local.Port() == 0 {
		return fmt.Errorf("ttcp inject: local endpoint %v: want IPv4 with a port", local)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.raw >= 0 {
		p := buildTCP(local, d.Src, rand.Uint32(), 0, tcpSYN, 64240, nil, s.cfg.OpenTTL)
		sa := &unix.SockaddrInet4{Addr: d.Src.Addr().As4()}
		if err := unix.Sendto(s.raw, p, 0, sa); err != nil {
			return fmt.Errorf("ttcp inject: opening SYN to %v: %w", d.Src, err)
		}
	}
	if _, err := unix.Write(s.tun, d.Packet(d.Src, local, 64)); err != nil {
		return fmt.Errorf("ttcp inject: write to %s: %w", s.cfg.TUN, err)
	}
	return nil
}

// Close removes the firewall rule and the TUN device. It may be called
// from any goroutine, more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeLocked(true)
}

func (s *Server) closeLocked(inOtherThread bool) error {
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if s.rule.table != "" {
		del := func() error { return delRule(s.cfg.Iptables, s.rule) }
		if inOtherThread {
			errs = append(errs, inNS(s.ns, del))
		} else {
			errs = append(errs, del())
		}
	}
	if s.raw >= 0 {
		errs = append(errs, unix.Close(s.raw))
	}
	if s.tun >= 0 {
		errs = append(errs, unix.Close(s.tun))
	}
	if s.ns != nil {
		errs = append(errs, s.ns.Close())
	}
	return errors.Join(errs...)
}
