package netlab

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// delayQueue is the NFQUEUE number of a namespace's delay line. Queues are
// per network namespace, so every edge uses the same number.
const delayQueue = 1

// ruleset accumulates an iptables-restore input, table by table.
type ruleset struct {
	tables []string
	chains map[string][]string // table -> ":CHAIN POLICY [0:0]" lines
	rules  map[string][]string // table -> "-A ..." lines
}

func newRuleset() *ruleset {
	return &ruleset{chains: map[string][]string{}, rules: map[string][]string{}}
}

func (r *ruleset) table(name string, chains ...string) {
	r.tables = append(r.tables, name)
	for _, c := range chains {
		name, policy, _ := strings.Cut(c, " ")
		r.chains[r.tables[len(r.tables)-1]] = append(r.chains[r.tables[len(r.tables)-1]], fmt.Sprintf(":%s %s [0:0]", name, policy))
	}
}

func (r *ruleset) add(table string, rule string) { r.rules[table] = append(r.rules[table], rule) }

func (r *ruleset) String() string {
	var b strings.Builder
	for _, t := range r.tables {
		fmt.Fprintf(&b, "*%s\n", t)
		for _, c := range r.chains[t] {
			b.WriteString(c + "\n")
		}
		for _, l := range r.rules[t] {
			b.WriteString(l + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// shapeRules sends both directions of a WAN link to the namespace's delay
// line, which adds the delay and the loss. Loss is not an iptables DROP:
// dropping a host's own outgoing packet in netfilter fails its send with
// EPERM, which no real link does; a later NF_DROP verdict is silent. The
// rules sit in the raw table, before conntrack, so a held packet has no
// unconfirmed connection entry. in matches packets arriving from the
// Internet, out those leaving toward it.
func shapeRules(r *ruleset, in, out string) {
	r.table("raw", "PREROUTING ACCEPT", "OUTPUT ACCEPT")
	for _, m := range []string{in, out} {
		r.add("raw", m+" -j NFQUEUE --queue-num "+strconv.Itoa(delayQueue))
	}
}

// needsDelayLine reports whether a shape needs a delay line.
func needsDelayLine(sh Shape) bool { return sh.Loss > 0 || sh.Delay > 0 }

// routerRules is the ruleset of a site's router: a NAT (cone, symmetric,
// upnp, udp-blocked, both routers of double-nat) or a routing firewall.
// Interfaces: wan0 toward the Internet (or the carrier NAT), lan0 the
// site's LAN bridge. shape applies to the router's WAN link.
func routerRules(kind Kind, blockUDP bool, lan netip.Prefix, shape Shape) string {
	r := newRuleset()
	if needsDelayLine(shape) {
		// From the LAN toward the Internet: not addressed to the LAN itself.
		shapeRules(r, "-A PREROUTING -i wan0", "-A PREROUTING -i lan0 ! -d "+lan.String())
	}
	r.table("filter", "INPUT DROP", "FORWARD DROP", "OUTPUT ACCEPT")
	if blockUDP {
		r.add("filter", "-A FORWARD -p udp -j DROP")
	}
	r.add("filter", "-A INPUT -i lo -j ACCEPT")
	r.add("filter", "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
	r.add("filter", "-A INPUT -i lan0 -j ACCEPT")
	r.add("filter", "-A INPUT -p icmp --icmp-type echo-request -j ACCEPT")
	if kind == UPnP {
		// miniupnpd checks with STUN (RFC 3489 change-address requests) that
		// it is behind a 1:1 NAT; the answers come from the STUN server's
		// other address and port, which stateful filtering would drop.
		r.add("filter", "-A INPUT -i wan0 -p udp -s "+stunAddr1.String()+"/31 --sport 3478:3479 -j ACCEPT")
	}
	r.add("filter", "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
	// Between the site's own hosts: with br_netfilter loaded (as on this
	// kernel), frames bridged across the LAN pass the router's FORWARD
	// chain, and the site's hosts must reach each other.
	r.add("filter", "-A FORWARD -i lan0 -o lan0 -j ACCEPT")
	// From the LAN anything goes, including a SYN/ACK whose SYN the router
	// never saw (conntrack INVALID): LAB.md's "firewall" row relies on it.
	r.add("filter", "-A FORWARD -i lan0 -o wan0 -j ACCEPT")
	if kind == UPnP {
		// miniupnpd's DNAT rules live in nftables (table inet filter); a
		// packet they translated is allowed here by its conntrack state.
		r.add("filter", "-A FORWARD -i wan0 -o lan0 -m conntrack --ctstate DNAT -j ACCEPT")
	}
	if kind.nat() {
		r.table("nat", "PREROUTING ACCEPT", "INPUT ACCEPT", "OUTPUT ACCEPT", "POSTROUTING ACCEPT")
		masq := "-A POSTROUTING -o wan0 -j MASQUERADE"
		if kind == Symmetric {
			masq += " --random-fully"
		}
		r.add("nat", masq)
	}
	return r.String()
}

// hostRules is the ruleset of a host that sits on the Internet bridge
// itself (public, hostfw): its own firewall, UDP blocking and shaping on
// eth0. It returns "" when the host needs no rules.
func hostRules(kind Kind, blockUDP bool, shape Shape) string {
	r := newRuleset()
	if needsDelayLine(shape) {
		shapeRules(r, "-A PREROUTING -i eth0", "-A OUTPUT -o eth0")
	}
	if kind == HostFW || blockUDP {
		policy := "INPUT ACCEPT"
		if kind == HostFW {
			policy = "INPUT DROP"
		}
		r.table("filter", policy, "FORWARD DROP", "OUTPUT ACCEPT")
		if blockUDP {
			r.add("filter", "-A INPUT -i eth0 -p udp -j DROP")
			r.add("filter", "-A OUTPUT -o eth0 -p udp -j DROP")
		}
		if kind == HostFW {
			r.add("filter", "-A INPUT -i lo -j ACCEPT")
			// The overlay's interface, as the host's administrator allows
			// it when installing pvcd (as ufw users do for tailscale0):
			// what comes in there is decided by PVC's own policy filter.
			// The underlay (eth0) stays closed to new inbound flows.
			r.add("filter", "-A INPUT -i pvc0 -j ACCEPT")
			r.add("filter", "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
		}
	}
	return r.String()
}

// tbfArgs returns the tc arguments that limit a device's egress to rate
// bit/s: a token bucket with a burst of 4 ms of traffic (at least 16 KiB)
// and 50 ms of queue.
func tbfArgs(dev string, rate uint64) []string {
	burst := rate / 8 / 250
	if burst < 16384 {
		burst = 16384
	}
	return []string{"qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", strconv.FormatUint(rate, 10) + "bit",
		"burst", strconv.FormatUint(burst, 10),
		"latency", "50ms"}
}
