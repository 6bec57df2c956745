package netlab

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Kind is what a site's edge does to traffic; see LAB.md.
type Kind string

// The site kinds of LAB.md.
const (
	Public     Kind = "public"      // host on the Internet bridge, no filtering
	HostFW     Kind = "hostfw"      // host on the Internet with its own stateful firewall
	Firewall   Kind = "firewall"    // a routing (no NAT) firewall that drops inbound NEW
	Cone       Kind = "cone"        // MASQUERADE: endpoint-independent mapping, port-restricted filtering
	Symmetric  Kind = "symmetric"   // MASQUERADE --random-fully: a new port per destination
	UDPBlocked Kind = "udp-blocked" // cone with all UDP dropped on the WAN
	UPnP       Kind = "upnp"        // cone with miniupnpd on the router's LAN side
	DoubleNAT  Kind = "double-nat"  // two cone routers in a row (carrier-grade NAT)
)

// Kinds lists every site kind, in the order of LAB.md.
var Kinds = []Kind{Public, HostFW, Firewall, Cone, Symmetric, UDPBlocked, UPnP, DoubleNAT}

func (k Kind) valid() bool {
	for _, x := range Kinds {
		if k == x {
			return true
		}
	}
	return false
}

// routed reports whether the site has a router namespace (else its hosts
// sit on the Internet bridge themselves).
func (k Kind) routed() bool { return k != Public && k != HostFW }

// nat reports whether the site's router translates addresses.
func (k Kind) nat() bool { return k.routed() && k != Firewall }

// Shape emulates a WAN link on a site's connection to the Internet. Each
// value applies to both directions. The zero Shape is an unshaped link.
type Shape struct {
	Delay time.Duration // added one way (so the round trip grows by 2×Delay); 0: none
	Loss  float64       // fraction of packets dropped, 0 to <1 (0.05 is 5%); 0: none
	Rate  uint64        // bits per second; 0: unlimited
}

// IsZero reports whether the shape changes nothing.
func (s Shape) IsZero() bool { return s == Shape{} }

// SiteSpec describes one site.
type SiteSpec struct {
	Name       string // short name: a lowercase letter, then up to 9 letters or digits
	Kind       Kind
	UDPBlocked bool  // drop all UDP on the site's WAN (implied by Kind UDPBlocked)
	Hosts      int   // hosts in the site; 0 means 1
	Shape      Shape // the WAN link's shaping
}

// blocksUDP reports whether UDP is dropped at the site's edge.
func (s SiteSpec) blocksUDP() bool { return s.UDPBlocked || s.Kind == UDPBlocked }

func (s SiteSpec) hosts() int {
	if s.Hosts == 0 {
		return 1
	}
	return s.Hosts
}

// Spec describes a whole lab.
type Spec struct {
	// Internet names hosts attached to the Internet bridge with no
	// filtering (brokers, servers), at 203.0.113.10 and up, in order.
	Internet []string
	Sites    []SiteSpec
}

// Limits of the address plan.
const (
	maxInternetHosts = 90  // .10-.99
	maxWAN           = 154 // .100-.253
	maxSites         = 250 // 198.18.1.0/24 .. 198.18.250.0/24
	maxHostsPerSite  = 200 // .2-.201
)

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,9}$`)

// ErrBadSpec is wrapped by every error of Spec.Validate.
var ErrBadSpec = errors.New("bad lab spec")

// Validate checks names, kinds, counts and shapes, and that the address
// plan can hold the lab.
func (s Spec) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadSpec, fmt.Sprintf(format, args...))
	}
	seen := map[string]bool{"inet": true, "stun": true}
	for _, n := range s.Internet {
		if !nameRE.MatchString(n) {
			return bad("Internet host name %q: want a lowercase letter then up to 9 letters or digits", n)
		}
		if seen[n] {
			return bad("name %q is used twice or reserved", n)
		}
		seen[n] = true
	}
	if len(s.Internet) > maxInternetHosts {
		return bad("%d Internet hosts: at most %d", len(s.Internet), maxInternetHosts)
	}
	if len(s.Sites) > maxSites {
		return bad("%d sites: at most %d", len(s.Sites), maxSites)
	}
	wan := 0
	for _, st := range s.Sites {
		if !nameRE.MatchString(st.Name) {
			return bad("site name %q: want a lowercase letter then up to 9 letters or digits", st.Name)
		}
		if seen[st.Name] {
			return bad("name %q is used twice or reserved", st.Name)
		}
		seen[st.Name] = true
		if !st.Kind.valid() {
			return bad("site %s: unknown kind %q (want one of %v)", st.Name, st.Kind, Kinds)
		}
		if st.Hosts < 0 || st.Hosts > maxHostsPerSite {
			return bad("site %s: %d hosts: want 1 to %d", st.Name, st.Hosts, maxHostsPerSite)
		}
		if st.Shape.Loss < 0 || st.Shape.Loss >= 1 {
			return bad("site %s: loss %v: want a fraction from 0 to below 1", st.Name, st.Shape.Loss)
		}
		if st.Shape.Delay < 0 || st.Shape.Delay > 10*time.Second {
			return bad("site %s: delay %v: want 0 to 10s", st.Name, st.Shape.Delay)
		}
		if st.Shape.Rate != 0 && st.Shape.Rate < 8000 {
			return bad("site %s: rate %d bit/s: want 0 (unlimited) or at least 8000", st.Name, st.Shape.Rate)
		}
		if st.Kind.routed() {
			wan++
		} else {
			wan += st.hosts()
		}
	}
	if wan > maxWAN {
		return bad("the sites need %d Internet addresses: at most %d", wan, maxWAN)
	}
	return nil
}

// Addresses of the plan.
var (
	stunAddr1 = netip.MustParseAddr("203.0.113.2")
	stunAddr2 = netip.MustParseAddr("203.0.113.3")
)

func inetAddr(last int) netip.Addr { return netip.AddrFrom4([4]byte{203, 0, 113, byte(last)}) }

func lanPrefix(site int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(site), 0}), 24)
}

func cgnPrefix(site int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(site), 0}), 24)
}

// nth returns the address n places after p's base address.
func nth(p netip.Prefix, n int) netip.Addr {
	b := p.Addr().As4()
	b[3] += byte(n)
	return netip.AddrFrom4(b)
}

// ParseRate parses a link rate such as "100mbit", "1gbit", "512kbit" or a
// plain number of bits per second.
func ParseRate(s string) (uint64, error) {
	units := []struct {
		suffix string
		mult   uint64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}}
	num, mult := s, uint64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(strings.ToLower(s), u.suffix); ok {
			num, mult = rest, u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v <= 0 || v*float64(mult) > 1e12 {
		return 0, fmt.Errorf("rate %q: want a positive number with kbit, mbit or gbit (e.g. 100mbit)", s)
	}
	return uint64(v * float64(mult)), nil
}

// ParseKind parses a site kind name.
func ParseKind(s string) (Kind, error) {
	k := Kind(s)
	if !k.valid() {
		return "", fmt.Errorf("unknown site kind %q (want one of %v)", s, Kinds)
	}
	return k, nil
}
