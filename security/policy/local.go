package policy

import (
	"fmt"
	"net/netip"
	"strings"
)

// Local is a host's local policy, written by its site's administrator. The
// zero value allows everything.
type Local struct {
	// Domain lists the site's networks (underlay addresses). A peer whose
	// underlay address is in none of them, or unknown, is "outside".
	Domain []netip.Prefix
	// OutsideInbound and OutsideOutbound say whether flows that peers
	// outside the domain open to this host, and that this host opens to
	// them, are allowed. The zero value of Local allows both.
	OutsideInbound, OutsideOutbound Action
	// Inbound lists what peers may reach on this host. Nil with
	// RestrictInbound false: everything.
	Inbound []InboundRule
	// RestrictInbound is true when the file has inbound lines: then only
	// what Inbound lists is reachable.
	RestrictInbound bool
	// UPnP says whether pvcd may map its port on the site's gateway with
	// UPnP IGD (ParseLocal: Allow unless the file says "upnp deny").
	UPnP Action
}

// InboundRule lets peers reach local ports of one protocol.
type InboundRule struct {
	Proto Proto       // tcp, udp, icmp or any
	Ports []PortRange // empty: all ports
	Line  int
}

// ParseLocal parses a local policy file. The format, one statement per
// line, '#' starting a comment; every statement is optional:
//
//	domain PREFIX [PREFIX...]          the site's networks (repeatable)
//	outside inbound allow|deny         peers outside the domain may open flows to this host
//	outside outbound allow|deny        this host may open flows to peers outside the domain
//	inbound tcp|udp PORTS|any          local ports peers may reach (repeatable)
//	inbound icmp                       peers may ping this host
//	inbound any                        peers may reach everything
//	inbound none                       peers may reach nothing
//	upnp allow|deny                    pvcd may map its port on the site's gateway (default allow)
//
// Without inbound lines every local port is reachable; with any, only what
// they list. Without outside lines both directions are allowed. Errors name
// the line.
func ParseLocal(src []byte) (*Local, error) {
	if len(src) > MaxSource {
		return nil, fmt.Errorf("%w: local policy larger than %d bytes", ErrSyntax, MaxSource)
	}
	l := &Local{OutsideInbound: Allow, OutsideOutbound: Allow, UPnP: Allow}
	var sawIn, sawOut, sawUPnP bool
	err := eachLine(src, func(n int, f []string) error {
		switch f[0] {
		case "domain":
			if len(f) < 2 {
				return fmt.Errorf("domain needs at least one network (e.g. 192.0.2.0/24)")
			}
			for _, s := range strings.Split(strings.Join(f[1:], ","), ",") {
				if s == "" {
					continue
				}
				p, err := netip.ParsePrefix(s)
				if err != nil {
					return fmt.Errorf("domain network %q: want a prefix such as 192.0.2.0/24", s)
				}
				if p.Masked() != p {
					return fmt.Errorf("domain network %q has host bits set (did you mean %v?)", s, p.Masked())
				}
				if len(l.Domain) == MaxRules {
					return fmt.Errorf("more than %d domain networks", MaxRules)
				}
				l.Domain = append(l.Domain, p)
			}
			return nil
		case "outside":
			if len(f) != 3 || (f[1] != "inbound" && f[1] != "outbound") {
				return fmt.Errorf("want \"outside inbound|outbound allow|deny\"")
			}
			a, err := parseAction(f[2])
			if err != nil {
				return err
			}
			if f[1] == "inbound" {
				if sawIn {
					return fmt.Errorf("second \"outside inbound\" line")
				}
				l.OutsideInbound, sawIn = a, true
			} else {
				if sawOut {
					return fmt.Errorf("second \"outside outbound\" line")
				}
				l.OutsideOutbound, sawOut = a, true
			}
			return nil
		case "inbound":
			return l.parseInbound(n, f)
		case "upnp":
			if len(f) != 2 {
				return fmt.Errorf("want \"upnp allow|deny\"")
			}
			a, err := parseAction(f[1])
			if err != nil {
				return err
			}
			if sawUPnP {
				return fmt.Errorf("second \"upnp\" line")
			}
			l.UPnP, sawUPnP = a, true
			return nil
		}
		return fmt.Errorf("unknown statement %q (want domain, outside, inbound or upnp)", f[0])
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Local) parseInbound(n int, f []string) error {
	l.RestrictInbound = true
	if len(l.Inbound) == MaxRules {
		return fmt.Errorf("more than %d inbound lines", MaxRules)
	}
	if len(f) < 2 {
		return fmt.Errorf("want \"inbound tcp|udp PORTS|any\", \"inbound icmp\", \"inbound any\" or \"inbound none\"")
	}
	switch f[1] {
	case "none":
		if len(f) != 2 {
			return fmt.Errorf("unexpected %q after \"inbound none\"", f[2])
		}
		return nil
	case "any", "icmp":
		if len(f) != 2 {
			return fmt.Errorf("unexpected %q after \"inbound %s\"", f[2], f[1])
		}
		p, _ := parseProto(f[1])
		l.Inbound = append(l.Inbound, InboundRule{Proto: p, Line: n})
		return nil
	case "tcp", "udp":
		p, _ := parseProto(f[1])
		if len(f) < 3 {
			return fmt.Errorf("inbound %s needs ports (e.g. 22,8000-8100) or any", f[1])
		}
		r := InboundRule{Proto: p, Line: n}
		if !(len(f) == 3 && f[2] == "any") {
			ports, err := parsePorts(strings.Join(f[2:], ","))
			if err != nil {
				return err
			}
			r.Ports = ports
		}
		l.Inbound = append(l.Inbound, r)
		return nil
	}
	return fmt.Errorf("unknown protocol %q after inbound (want tcp, udp, icmp, any or none)", f[1])
}

// Inside reports whether an underlay address is in the host's domain. An
// invalid (unknown) address is outside.
func (l *Local) Inside(underlay netip.Addr) bool {
	underlay = underlay.Unmap()
	for _, p := range l.Domain {
		if p.Contains(underlay) {
			return true
		}
	}
	return false
}

// Text returns l in the text form that ParseLocal reads.
func (l *Local) Text() string {
	var b strings.Builder
	if len(l.Domain) > 0 {
		b.WriteString("domain")
		for _, p := range l.Domain {
			b.WriteString(" " + p.String())
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "outside inbound %s\noutside outbound %s\n", l.OutsideInbound, l.OutsideOutbound)
	if l.UPnP == Deny {
		b.WriteString("upnp deny\n")
	}
	if l.RestrictInbound && len(l.Inbound) == 0 {
		b.WriteString("inbound none\n")
	}
	for _, r := range l.Inbound {
		switch {
		case r.Proto == ProtoAny || r.Proto == ProtoICMP:
			fmt.Fprintf(&b, "inbound %s\n", r.Proto)
		case len(r.Ports) == 0:
			fmt.Fprintf(&b, "inbound %s any\n", r.Proto)
		default:
			ps := make([]string, len(r.Ports))
			for i, p := range r.Ports {
				ps[i] = p.String()
			}
			fmt.Fprintf(&b, "inbound %s %s\n", r.Proto, strings.Join(ps, ","))
		}
	}
	return b.String()
}
