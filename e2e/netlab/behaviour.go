package netlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Mapping is how a site's edge maps a host's UDP source port, as seen from
// two Internet hosts.
type Mapping string

// Mapping values.
const (
	MapNone        Mapping = "none"                 // no translation: the host's own address and port
	MapIndependent Mapping = "endpoint-independent" // one public port for every destination (cone)
	MapPerDest     Mapping = "per-destination"      // a new public port per destination (symmetric)
	MapUnknown     Mapping = "n/a"                  // UDP does not get out: nothing to see
)

// Behaviour is what a site does to traffic, measured with real packets
// (Prober.Probe) or expected from its kind (Expected).
type Behaviour struct {
	PublicAddr   netip.Addr // the source address an Internet host sees (over TCP)
	Translations int        // how many address translations lie between host and Internet
	Mapping      Mapping    // UDP mapping toward two destinations
	OutboundTCP  bool       // a TCP connection to the Internet completes
	OutboundUDP  bool       // a datagram to the Internet arrives
	ReplyUDP     bool       // the answer to it comes back
	InboundTCP   bool       // an unsolicited TCP connection from the Internet reaches the host
	InboundUDP   bool       // an unsolicited datagram from the Internet reaches the host
}

// Expected returns the behaviour that LAB.md's table gives the site's kind.
func Expected(s *Site) Behaviour {
	b := Behaviour{PublicAddr: s.PublicAddr, OutboundTCP: true, OutboundUDP: true, ReplyUDP: true}
	switch s.Spec.Kind {
	case Public:
		b.Mapping, b.InboundTCP, b.InboundUDP = MapNone, true, true
	case HostFW, Firewall:
		b.Mapping = MapNone
	case Cone, UPnP, UDPBlocked:
		b.Mapping, b.Translations = MapIndependent, 1
	case Symmetric:
		b.Mapping, b.Translations = MapPerDest, 1
	case DoubleNAT:
		b.Mapping, b.Translations = MapIndependent, 2
	}
	if s.Spec.blocksUDP() {
		b.Mapping, b.OutboundUDP, b.ReplyUDP, b.InboundUDP = MapUnknown, false, false, false
	}
	return b
}

// BehaviourHeader is the header line for Behaviour.Row.
const BehaviourHeader = "public addr      NATs mapping               out-tcp out-udp reply-udp in-tcp in-udp"

// Row formats b as one line of a table under BehaviourHeader.
func (b Behaviour) Row() string {
	yn := func(v bool) string {
		if v {
			return "yes"
		}
		return "no"
	}
	return fmt.Sprintf("%-16s %-4d %-22s %-7s %-7s %-9s %-6s %s", b.PublicAddr, b.Translations, b.Mapping,
		yn(b.OutboundTCP), yn(b.OutboundUDP), yn(b.ReplyUDP), yn(b.InboundTCP), yn(b.InboundUDP))
}

// Diff lists the fields in which got differs from want; "" if none.
func (got Behaviour) Diff(want Behaviour) string {
	var d []string
	add := func(name string, g, w any) {
		if g != w {
			d = append(d, fmt.Sprintf("%s: got %v, want %v", name, g, w))
		}
	}
	add("public address", got.PublicAddr, want.PublicAddr)
	add("translations", got.Translations, want.Translations)
	add("mapping", got.Mapping, want.Mapping)
	add("outbound TCP", got.OutboundTCP, want.OutboundTCP)
	add("outbound UDP", got.OutboundUDP, want.OutboundUDP)
	add("UDP reply", got.ReplyUDP, want.ReplyUDP)
	add("unsolicited inbound TCP", got.InboundTCP, want.InboundTCP)
	add("unsolicited inbound UDP", got.InboundUDP, want.InboundUDP)
	return strings.Join(d, "; ")
}

// Ports used by the probes.
const (
	echoPort    = 7000 // echo servers on the Internet hosts and routers
	inboundPort = 7100 // echo on the probed host, for unsolicited traffic
	mapPort     = 7200 // the probed host's UDP source port for the mapping test
	upnpPort    = 7300 // the port the UPnP probe maps
)

// Prober measures sites from two Internet hosts that run echo servers.
type Prober struct {
	A, B *Echo
	// Wait is how long a probe waits before it calls traffic dropped.
	Wait time.Duration
}

// NewProber starts echo servers on two Internet hosts of the lab.
func NewProber(a, b *Host) (*Prober, error) {
	ea, err := StartEcho(a, a.Addr, echoPort)
	if err != nil {
		return nil, err
	}
	eb, err := StartEcho(b, b.Addr, echoPort)
	if err != nil {
		ea.Close()
		return nil, err
	}
	return &Prober{A: ea, B: eb, Wait: 500 * time.Millisecond}, nil
}

// Close stops the echo servers.
func (p *Prober) Close() error { return errors.Join(p.A.Close(), p.B.Close()) }

func (p *Prober) dst(e *Echo) netip.AddrPort { return netip.AddrPortFrom(e.Host.Addr, echoPort) }

// Probe measures the behaviour of site s from its first host.
func (p *Prober) Probe(s *Site) (Behaviour, error) {
	h := s.Hosts[0]
	var b Behaviour

	// Outbound TCP and the public address.
	seen, err := AskTCP(h, p.dst(p.A), 2*time.Second)
	if err == nil {
		b.OutboundTCP, b.PublicAddr = true, seen.Addr()
	} else if !errors.Is(err, ErrNoAnswer) {
		return b, err
	}

	// Translations: the source address seen at each hop that has an echo.
	if b.OutboundTCP {
		chain := []netip.Addr{h.Addr}
		if s.Outer != nil {
			e, err := StartEcho(s.Outer, s.Outer.Addr, echoPort)
			if err != nil {
				return b, err
			}
			seen, err := AskTCP(h, netip.AddrPortFrom(s.Outer.Addr, echoPort), 2*time.Second)
			e.Close()
			if err != nil {
				return b, fmt.Errorf("echo on the carrier NAT: %w", err)
			}
			chain = append(chain, seen.Addr())
		}
		chain = append(chain, b.PublicAddr)
		for i := 1; i < len(chain); i++ {
			if chain[i] != chain[i-1] {
				b.Translations++
			}
		}
	}

	// Outbound UDP from one source port to two destinations.
	c, err := UDPSocket(h, mapPort)
	if err != nil {
		return b, err
	}
	seenA, errA := AskUDP(c, p.dst(p.A), p.Wait)
	seenB, errB := AskUDP(c, p.dst(p.B), p.Wait)
	c.Close()
	udpA, _ := p.A.seenProto(b.PublicAddr)
	udpB, _ := p.B.seenProto(b.PublicAddr)
	b.OutboundUDP = udpA || udpB
	b.ReplyUDP = errA == nil && errB == nil
	switch {
	case !b.ReplyUDP:
		b.Mapping = MapUnknown
	case seenA == netip.AddrPortFrom(h.Addr, mapPort) && seenB == seenA:
		b.Mapping = MapNone
	case seenA == seenB:
		b.Mapping = MapIndependent
	default:
		b.Mapping = MapPerDest
	}

	// Unsolicited traffic from the Internet to the host (for NAT sites: to
	// the public address, where no mapping exists).
	target := h.Addr
	if s.Spec.Kind.nat() {
		target = s.PublicAddr
	}
	in, err := StartEcho(h, netip.Addr{}, inboundPort)
	if err != nil {
		return b, err
	}
	defer in.Close()
	from := p.A.Host
	cu, err := UDPSocket(from, 0)
	if err != nil {
		return b, err
	}
	_, _ = AskUDP(cu, netip.AddrPortFrom(target, inboundPort), p.Wait)
	cu.Close()
	_, _ = AskTCP(from, netip.AddrPortFrom(target, inboundPort), p.Wait)
	b.InboundUDP, b.InboundTCP = in.seenProto(from.Addr)
	return b, nil
}

// ProbeAll probes every site in parallel and returns the behaviours in
// site order.
func (p *Prober) ProbeAll(sites []*Site) ([]Behaviour, error) {
	out := make([]Behaviour, len(sites))
	errs := make([]error, len(sites))
	var wg sync.WaitGroup
	for i, s := range sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = p.Probe(s)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("probe site %s: %w", s.Name(), errs[i])
			}
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// UPnPResult is what ProbeUPnP saw.
type UPnPResult struct {
	Mapped        bool // upnpc added the mapping
	Arrived       bool // a datagram from the Internet arrived through it
	ClosedAfter   bool // after upnpc removed it, a new sender's datagram did not arrive
	ClientOutput  string
	ExternalAddr  netip.AddrPort
	MappingListed bool // upnpc -l listed the mapping while it existed
}

// ProbeUPnP maps a UDP port on an upnp site's router with the real upnpc,
// sends a datagram through the mapping from an Internet host, removes the
// mapping, and checks that a new sender's datagram no longer arrives.
func ProbeUPnP(ctx context.Context, s *Site, from *Host, wait time.Duration) (UPnPResult, error) {
	var r UPnPResult
	if s.Spec.Kind != UPnP {
		return r, fmt.Errorf("site %s is %s, not upnp", s.Name(), s.Spec.Kind)
	}
	h := s.Hosts[0]
	in, err := StartEcho(h, netip.Addr{}, upnpPort)
	if err != nil {
		return r, err
	}
	defer in.Close()
	url := s.UPnPRootDesc()
	port := fmt.Sprint(upnpPort)
	out, err := h.Run(ctx, "upnpc", "-i", "-u", url, "-e", "pvc-lab probe", "-a", h.Addr.String(), port, port, "UDP", "600")
	r.ClientOutput = out
	if err != nil || !strings.Contains(out, "is redirected to internal") {
		return r, nil
	}
	r.Mapped = true
	r.ExternalAddr = netip.AddrPortFrom(s.PublicAddr, upnpPort)
	if list, err := h.Run(ctx, "upnpc", "-i", "-u", url, "-l"); err == nil {
		r.MappingListed = strings.Contains(list, "UDP  "+port+"->"+h.Addr.String()+":"+port)
		r.ClientOutput += list
	}
	c, err := UDPSocket(from, 0)
	if err != nil {
		return r, err
	}
	_, err = AskUDP(c, r.ExternalAddr, 2*time.Second)
	c.Close()
	r.Arrived = err == nil && in.SeenFrom(from.Addr)
	out, err = h.Run(ctx, "upnpc", "-i", "-u", url, "-d", port, "UDP")
	r.ClientOutput += out
	if err != nil {
		return r, err
	}
	before := len(in.Seen())
	// A new sender (new source port): the first one's conntrack entry
	// would still carry its own flow, as on any router.
	c, err = UDPSocket(from, 0)
	if err != nil {
		return r, err
	}
	_, err = AskUDP(c, r.ExternalAddr, wait)
	c.Close()
	r.ClosedAfter = errors.Is(err, ErrNoAnswer) && len(in.Seen()) == before
	return r, nil
}
