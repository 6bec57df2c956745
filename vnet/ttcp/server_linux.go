//go:build linux

package ttcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	mdnetlink "github.com/mdlayher/netlink"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ServerConfig configures a Server. The zero value works.
type ServerConfig struct {
	// TUN names the device that injected SYNs are written into; "":
	// DefaultTUN. One per network namespace.
	TUN string
	// OpenTTL, when not 0, makes the server open its own router's state
	// first: the kernel's SYN/ACK to an injected SYN is held (NFQUEUE on
	// OUTPUT), a SYN with the same sequence number and options but this
	// TTL goes out instead (untracked on this host), and the SYN/ACK is
	// dropped, so that a router in front of the server (NAT or firewall)
	// records the flow as outbound with the right sequence numbers; the
	// client's retransmitted SYN (after 1 s) then crosses the router as a
	// reply, and the SYN/ACK to it is translated and let through. The TTL
	// must be large enough to leave the server's own routers and should
	// be too small to reach the client (2 behind one router). 0: none.
	OpenTTL uint8
	// Queue is the NFQUEUE number of the SYN/ACK hold with OpenTTL; 0:
	// DefaultServerQueue.
	Queue uint16
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

// DefaultServerQueue is the NFQUEUE number of a Server with OpenTTL.
const DefaultServerQueue = 7290

// openMark marks the opening SYNs so that this host's conntrack ignores
// them (the host's own firewall already tracks the injected flow).
const openMark = 0x7c7c0001

// flowMark is the connmark bit of flows injected through the TUN device.
const flowMark = 0x00400000

// Server injects described SYNs into the local IP stack. The listening
// socket is the caller's ordinary TCP listener; the connection appears
// there as an accepted net.Conn. Use one Server per network namespace (or
// give each its own TUN name and, with OpenTTL, its own Queue).
type Server struct {
	cfg   ServerConfig
	ns    *os.File // the namespace the server was made in (for Close)
	tun   int      // TUN file descriptor
	raw   int      // raw IPv4 socket (IP_HDRINCL), -1 without OpenTTL
	rules []rule
	nf    *nfqueue.Nfqueue // the SYN/ACK hold, nil without OpenTTL
	stop  context.CancelFunc

	mu      sync.Mutex // guards closed, pending
	closed  bool
	pending map[[2]netip.AddrPort]*opening // (local, client) → state
}

// opening is the state of one injected flow with OpenTTL.
type opening struct {
	expires time.Time
	sent    bool // the opening SYN left; later SYN/ACKs pass
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
			s.closed = true
			s.release(false)
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
	rules := []rule{{table: "filter", chain: "INPUT", spec: []string{"-i", cfg.TUN, "-p", "tcp", "--syn",
		"-m", "comment", "--comment", "pvc-ttcp injected SYN", "-j", "ACCEPT"}}}
	if cfg.OpenTTL > 0 {
		if err := s.openHold(); err != nil {
			return nil, fmt.Errorf("ttcp server: %w", err)
		}
		// The opening SYN dies on the way (TTL), and the router that drops it
		// answers with an ICMP time-exceeded quoting our own sequence number,
		// which would make the kernel drop the half-open connection: flows
		// that came in through the TUN device are connmarked, and such errors
		// about them are dropped.
		mark := fmt.Sprintf("%#x/%#x", flowMark, flowMark)
		rules = append(rules,
			rule{table: "mangle", chain: "PREROUTING", spec: []string{"-i", s.cfg.TUN, "-p", "tcp",
				"-m", "comment", "--comment", "pvc-ttcp injected flow", "-j", "CONNMARK", "--set-xmark", mark}},
			rule{table: "filter", chain: "INPUT", spec: []string{"-p", "icmp", "--icmp-type", "time-exceeded", "-m", "connmark", "--mark", mark,
				"-m", "comment", "--comment", "pvc-ttcp opening SYN expired", "-j", "DROP"}},
			rule{table: "raw", chain: "OUTPUT", spec: []string{"-p", "tcp", "-m", "mark", "--mark", strconv.Itoa(openMark),
				"-m", "comment", "--comment", "pvc-ttcp opening SYN", "-j", "CT", "--notrack"}},
			rule{table: "mangle", chain: "OUTPUT", spec: []string{"-p", "tcp", "--tcp-flags", "SYN,ACK,RST,FIN", "SYN,ACK",
				"-m", "connmark", "--mark", mark, "-m", "comment", "--comment", "pvc-ttcp SYN/ACK hold", "-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(s.cfg.Queue)), "--queue-bypass"}})
	}
	if err := addRules(cfg.Iptables, rules); err != nil {
		return nil, fmt.Errorf("ttcp server: %w", err)
	}
	s.rules = rules
	ok = true
	return s, nil
}

// openHold opens the raw socket and the NFQUEUE of the SYN/ACK hold.
func (s *Server) openHold() error {
	if s.cfg.Queue == 0 {
		s.cfg.Queue = DefaultServerQueue
	}
	var err error
	if s.raw, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	if err := unix.SetsockoptInt(s.raw, unix.SOL_SOCKET, unix.SO_MARK, openMark); err != nil {
		return fmt.Errorf("raw socket mark: %w", err)
	}
	s.pending = map[[2]netip.AddrPort]*opening{}
	s.nf, err = nfqueue.Open(&nfqueue.Config{
		NfQueue: s.cfg.Queue, MaxPacketLen: 256, MaxQueueLen: 256,
		Copymode: nfqueue.NfQnlCopyPacket, AfFamily: unix.AF_INET, WriteTimeout: time.Second,
	})
	if err != nil {
		return fmt.Errorf("nfqueue %d: %w", s.cfg.Queue, err)
	}
	_ = s.nf.SetOption(mdnetlink.NoENOBUFS, true)
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	return s.nf.RegisterWithErrorFunc(ctx, s.hold, func(error) int {
		if ctx.Err() != nil {
			return 1
		}
		return 0
	})
}

// hold sees the SYN/ACKs of injected flows (with OpenTTL). The first one
// of a pending flow is replaced by the opening SYN; the rest pass.
func (s *Server) hold(a nfqueue.Attribute) int {
	if a.PacketID == nil {
		return 0
	}
	verdict := nfqueue.NfAccept
	if a.Payload != nil {
		if p := *a.Payload; len(p) >= 40 && p[0] == 0x45 && p[9] == 6 {
			key := [2]netip.AddrPort{
				netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[12:16])), binary.BigEndian.Uint16(p[20:])),
				netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[16:20])), binary.BigEndian.Uint16(p[22:])),
			}
			s.mu.Lock()
			o := s.pending[key]
			first := o != nil && !o.sent && time.Now().Before(o.expires)
			if first {
				o.sent = true
			}
			s.mu.Unlock()
			if first {
				if syn, ok := openingSYN(p, s.cfg.OpenTTL); ok {
					_ = unix.Sendto(s.raw, syn, 0, &unix.SockaddrInet4{Addr: key[1].Addr().As4()})
				}
				verdict = nfqueue.NfDrop
			}
		}
	}
	_ = s.nf.SetVerdict(*a.PacketID, verdict)
	return 0
}

// openingSYN turns a SYN/ACK (IPv4, no IP options) into the SYN with the
// same sequence number, ports and TCP options, and the given TTL.
func openingSYN(synack []byte, ttl uint8) ([]byte, bool) {
	ihl := int(synack[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(synack[2:]))
	if ihl != 20 || total > len(synack) || total < 40 {
		return nil, false
	}
	p := bytes.Clone(synack[:total])
	p[8] = ttl
	p[10], p[11] = 0, 0
	binary.BigEndian.PutUint16(p[10:], ^sum16(p[:20], 0))
	t := p[20:]
	if off := int(t[12]>>4) * 4; off < 20 || off > len(t) {
		return nil, false
	}
	t[13] = tcpSYN
	binary.BigEndian.PutUint32(t[8:], 0) // no ACK number
	t[16], t[17] = 0, 0
	var ph [12]byte
	copy(ph[0:], p[12:20])
	ph[9] = 6
	binary.BigEndian.PutUint16(ph[10:], uint16(len(t)))
	binary.BigEndian.PutUint16(t[16:], ^sum16(t, sum16(ph[:], 0)))
	return p, true
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

// openingLife is how long an injected flow waits for its SYN/ACK.
const openingLife = 30 * time.Second

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
	if s.pending != nil {
		now := time.Now()
		for k, o := range s.pending {
			if now.After(o.expires) {
				delete(s.pending, k)
			}
		}
		s.pending[[2]netip.AddrPort{local, d.Src}] = &opening{expires: now.Add(openingLife)}
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
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	return s.release(true)
}

// release frees everything; the hold's callback may still run until the
// queue is closed, so it is called without s.mu held.
func (s *Server) release(inOtherThread bool) error {
	var errs []error
	if len(s.rules) > 0 {
		del := func() error { return delRules(s.cfg.Iptables, s.rules) }
		if inOtherThread {
			errs = append(errs, inNS(s.ns, del))
		} else {
			errs = append(errs, del())
		}
	}
	if s.stop != nil {
		s.stop()
	}
	if s.nf != nil {
		errs = append(errs, s.nf.Close())
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
