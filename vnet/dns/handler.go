// Package dns is the cluster name service of a PVC peer. pvcd serves it on
// its virtual address, port 53, over UDP and TCP:
//
//   - NAME.DOMAIN A    -> the peer's virtual IPv4 (240.0.0.0/4);
//   - PTR for the in-addr.arpa names of the cluster subnet -> NAME.DOMAIN.;
//   - NXDOMAIN for unknown names inside those zones, NODATA (NOERROR, no
//     answer) for other types of a known name, both with the zone's SOA in
//     the authority section (RFC 2308);
//   - REFUSED for everything outside the zones: it is not a recursive
//     resolver.
//
// Names are case-insensitive; answers use a short TTL (DefaultTTL) because
// peers come and go. Names come from a Directory, fed by the data plane;
// MemDirectory is the concurrency-safe in-memory one.
//
// github.com/miekg/dns v1 (fix-only) is used behind this package: callers
// see Handler, Server, Directory and Peer, and need not import miekg/dns
// except to plug the Handler into another dns.Server. The host resolver
// integration (systemd-resolved, /etc/hosts) is in the hostdns subpackage.
package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/pvc-project/pvc/security/name"
)

// DefaultTTL is the TTL of answers, and of negative answers (SOA minimum),
// when Config.TTL is zero.
const DefaultTTL = 10 * time.Second

// EDNSSize is the UDP payload size announced in answers to EDNS queries
// (the DNS flag day 2020 value).
const EDNSSize = 1232

// ErrConfig is returned (wrapped) by NewHandler for a bad Config.
var ErrConfig = errors.New("bad dns config")

// Config says what a Handler serves.
type Config struct {
	// Domain is the cluster's DNS domain, e.g. "mycluster.pvc" (a trailing
	// dot is allowed). Required; each label follows the security/name rule.
	Domain string
	// Subnet is the cluster's subnet, IPv4 inside 240.0.0.0/4, /8 to /24.
	// PTR queries are answered for its addresses. Required.
	Subnet netip.Prefix
	// Directory holds the names. Required.
	Directory Directory
	// TTL of answers and of negative answers; zero means DefaultTTL.
	TTL time.Duration
}

// Handler answers queries for one cluster. It implements miekg/dns's
// Handler and is safe for concurrent use.
type Handler struct {
	dir       Directory
	subnet    netip.Prefix
	ttl       uint32
	domain    string // "mycluster.pvc.", lowercase
	dotDomain string // ".mycluster.pvc."
	rev       string // reverse zone apex, e.g. "1.240.in-addr.arpa."
	dotRev    string // "." + rev
	revOctets int    // octets of the address in rev's name
	hostmast  string // SOA RNAME for both zones
	nsName    string // SOA MNAME for both zones
}

// serialer is implemented by directories that number their versions
// (MemDirectory); the number becomes the SOA serial.
type serialer interface{ Serial() uint32 }

// NewHandler checks cfg and returns its Handler.
func NewHandler(cfg Config) (*Handler, error) {
	d := strings.TrimSuffix(strings.ToLower(cfg.Domain), ".")
	if d == "" || len(d) > 253 {
		return nil, fmt.Errorf("%w: domain %q", ErrConfig, cfg.Domain)
	}
	for _, l := range strings.Split(d, ".") {
		if err := name.Check(l); err != nil {
			return nil, fmt.Errorf("%w: domain %q: %v", ErrConfig, cfg.Domain, err)
		}
	}
	p := cfg.Subnet
	if !p.IsValid() || !p.Addr().Is4() || p.Masked() != p || p.Bits() < 8 || p.Bits() > 24 ||
		!VirtualNet.Contains(p.Addr()) {
		return nil, fmt.Errorf("%w: subnet %v: want a masked IPv4 /8 to /24 inside %v", ErrConfig, cfg.Subnet, VirtualNet)
	}
	if cfg.Directory == nil {
		return nil, fmt.Errorf("%w: no directory", ErrConfig)
	}
	ttl := cfg.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if ttl < time.Second || ttl > 24*time.Hour {
		return nil, fmt.Errorf("%w: TTL %v: want 1s to 24h", ErrConfig, cfg.TTL)
	}
	rev, octets := ReverseZone(p)
	h := &Handler{
		dir:       cfg.Directory,
		subnet:    p,
		ttl:       uint32(ttl / time.Second),
		domain:    d + ".",
		dotDomain: "." + d + ".",
		rev:       rev,
		dotRev:    "." + rev,
		revOctets: octets,
		nsName:    "ns." + d + ".",
		hostmast:  "hostmaster." + d + ".",
	}
	return h, nil
}

// Domain returns the served domain, lowercase, with a trailing dot.
func (h *Handler) Domain() string { return h.domain }

// ReverseZone returns the served reverse zone, e.g. "1.240.in-addr.arpa.".
func (h *Handler) ReverseZone() string { return h.rev }

// ReverseZone returns the in-addr.arpa zone that holds the IPv4 prefix p,
// cut at an octet boundary (240.1.0.0/16 -> "1.240.in-addr.arpa.",
// 240.16.0.0/12 -> "240.in-addr.arpa."), and how many octets its name has.
func ReverseZone(p netip.Prefix) (string, int) {
	n := p.Bits() / 8
	b := p.Addr().As4()
	var sb strings.Builder
	for i := n - 1; i >= 0; i-- {
		fmt.Fprintf(&sb, "%d.", b[i])
	}
	sb.WriteString("in-addr.arpa.")
	return sb.String(), n
}

// ServeDNS implements miekg/dns's Handler. Responses (QR set) get no
// answer, so two servers cannot loop.
func (h *Handler) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	if m := h.answer(r); m != nil {
		// An error means the client is gone; nothing to do, and a query
		// path never logs per packet.
		_ = w.WriteMsg(m)
	}
}

// answer builds the response to r, or returns nil for no response.
func (h *Handler) answer(r *mdns.Msg) *mdns.Msg {
	if r == nil || r.Response {
		return nil
	}
	m := &mdns.Msg{}
	m.Id = r.Id
	m.Response = true
	m.Opcode = r.Opcode
	m.RecursionDesired = r.RecursionDesired
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(EDNSSize, false)
		if opt.Version() != 0 {
			m.Rcode = mdns.RcodeBadVers
			return m
		}
	}
	if r.Opcode != mdns.OpcodeQuery {
		m.Rcode = mdns.RcodeNotImplemented
		return m
	}
	if len(r.Question) != 1 {
		m.Rcode = mdns.RcodeFormatError
		return m
	}
	q := r.Question[0]
	if !strings.HasSuffix(q.Name, ".") {
		// Not a name off the wire (those are fully qualified); it could
		// not be echoed back.
		m.Rcode = mdns.RcodeFormatError
		return m
	}
	m.Question = r.Question
	switch {
	case q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY:
		m.Rcode = mdns.RcodeRefused
		return m
	case q.Qtype == mdns.TypeAXFR || q.Qtype == mdns.TypeIXFR:
		// No zone transfers: the zones change every few seconds and the
		// peer list is not for everyone who can reach port 53.
		m.Rcode = mdns.RcodeRefused
		return m
	}
	qname := strings.ToLower(q.Name)
	switch {
	case qname == h.domain || strings.HasSuffix(qname, h.dotDomain):
		if !h.inZone(qname, h.domain) {
			break
		}
		h.forward(m, q, qname)
		return m
	case qname == h.rev || strings.HasSuffix(qname, h.dotRev):
		if !h.inZone(qname, h.rev) {
			break
		}
		h.reverse(m, q, qname)
		return m
	}
	m.Rcode = mdns.RcodeRefused
	return m
}

// inZone checks, for a name that ends in zone's text, that it really is
// inside zone: an escaped dot ("a\.mycluster.pvc.") can fake the suffix.
func (h *Handler) inZone(qname, zone string) bool {
	if strings.IndexByte(qname, '\\') < 0 {
		return true
	}
	return mdns.IsSubDomain(zone, qname)
}

// forward answers qname inside the cluster domain.
func (h *Handler) forward(m *mdns.Msg, q mdns.Question, qname string) {
	m.Authoritative = true
	if qname == h.domain {
		h.apex(m, q, h.domain)
		return
	}
	label := qname[:len(qname)-len(h.dotDomain)]
	if strings.IndexByte(label, '.') >= 0 || strings.IndexByte(label, '\\') >= 0 {
		// Peer names are single labels: nothing exists below them.
		h.negative(m, h.domain, mdns.RcodeNameError)
		return
	}
	a, ok := h.dir.LookupName(label)
	if !ok {
		h.negative(m, h.domain, mdns.RcodeNameError)
		return
	}
	if q.Qtype != mdns.TypeA && q.Qtype != mdns.TypeANY {
		h.negative(m, h.domain, mdns.RcodeSuccess)
		return
	}
	m.Answer = []mdns.RR{&mdns.A{Hdr: h.hdr(q.Name, mdns.TypeA), A: a.AsSlice()}}
}

// reverse answers qname inside the reverse zone.
func (h *Handler) reverse(m *mdns.Msg, q mdns.Question, qname string) {
	if qname == h.rev {
		m.Authoritative = true
		h.apex(m, q, h.rev)
		return
	}
	// The labels below the apex, most specific first: "4.3." of
	// "4.3.1.240.in-addr.arpa.".
	rest := qname[:len(qname)-len(h.dotRev)]
	b := h.subnet.Addr().As4()
	n := h.revOctets
	for rest != "" {
		i := strings.LastIndexByte(rest, '.')
		label := rest[i+1:]
		rest = rest[:max(i, 0)]
		v, ok := parseOctet(label)
		if !ok || n == 4 {
			// Not an address: nothing of ours can be there.
			m.Authoritative = true
			h.negative(m, h.rev, mdns.RcodeNameError)
			return
		}
		b[n] = v
		n++
	}
	if pfx := netip.PrefixFrom(netip.AddrFrom4(b), n*8); !pfx.Overlaps(h.subnet) {
		// In the octet-aligned zone but outside the subnet (subnets that
		// are not /8, /16 or /24): not ours to answer.
		m.Rcode = mdns.RcodeRefused
		return
	}
	m.Authoritative = true
	if n < 4 {
		// An empty non-terminal: names exist below it (RFC 8020).
		h.negative(m, h.rev, mdns.RcodeSuccess)
		return
	}
	peer, ok := h.dir.LookupAddr(netip.AddrFrom4(b))
	if !ok {
		h.negative(m, h.rev, mdns.RcodeNameError)
		return
	}
	if q.Qtype != mdns.TypePTR && q.Qtype != mdns.TypeANY {
		h.negative(m, h.rev, mdns.RcodeSuccess)
		return
	}
	m.Answer = []mdns.RR{&mdns.PTR{Hdr: h.hdr(q.Name, mdns.TypePTR), Ptr: peer + h.dotDomain}}
}

// apex answers a query for a zone's own name: its SOA, else NODATA.
func (h *Handler) apex(m *mdns.Msg, q mdns.Question, zone string) {
	if q.Qtype == mdns.TypeSOA || q.Qtype == mdns.TypeANY {
		soa := h.soa(zone)
		soa.Hdr.Name = q.Name
		m.Answer = []mdns.RR{soa}
		return
	}
	h.negative(m, zone, mdns.RcodeSuccess)
}

// negative makes m an NXDOMAIN or NODATA answer with zone's SOA.
func (h *Handler) negative(m *mdns.Msg, zone string, rcode int) {
	m.Rcode = rcode
	m.Ns = []mdns.RR{h.soa(zone)}
}

func (h *Handler) hdr(owner string, t uint16) mdns.RR_Header {
	return mdns.RR_Header{Name: owner, Rrtype: t, Class: mdns.ClassINET, Ttl: h.ttl}
}

// soa returns the SOA of zone. Its TTL and MINIMUM are the answer TTL, so
// negative answers are cached no longer than positive ones (RFC 2308).
func (h *Handler) soa(zone string) *mdns.SOA {
	serial := uint32(1)
	if s, ok := h.dir.(serialer); ok {
		serial = s.Serial()
	}
	return &mdns.SOA{
		Hdr:     h.hdr(zone, mdns.TypeSOA),
		Ns:      h.nsName,
		Mbox:    h.hostmast,
		Serial:  serial,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  h.ttl,
	}
}

// parseOctet parses a decimal 0-255 without leading zeros.
func parseOctet(s string) (byte, bool) {
	if s == "" || len(s) > 3 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	v := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	if v > 255 {
		return 0, false
	}
	return byte(v), true
}
