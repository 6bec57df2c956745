package tcppunch

// crossTable lists, per site kind, the kinds that TCP simultaneous open
// crosses to, as the lab measured (BenchmarkPunchMatrix), without and with the
// low-TTL first SYN (Config.OpenTTL); Crosses reads it both ways round.
// docs/traversal.md explains it.
var crossTable = map[string][2][]string{
	// Every port-preserving kind with every other: each side's SYN opens its
	// own NAT or firewall for the other's SYN. A symmetric NAT maps a new
	// port per destination, which the peer does not know.
	//
	// With a first SYN whose TTL leaves one's own router: in the lab no hop
	// lies between two routers, so that SYN expires in the peer's router,
	// which records it (with a sequence number the next SYN does not
	// continue) and answers with an ICMP time-exceeded that aborts the
	// connect. Only pairs with at most one router survive it.
	"public":     {portKeeping, portKeeping},
	"hostfw":     {portKeeping, portKeeping},
	"firewall":   {portKeeping, nil},
	"cone":       {portKeeping, nil},
	"double-nat": {portKeeping, nil},
	"symmetric":  {nil, nil},
}

var portKeeping = []string{"public", "hostfw", "firewall", "cone", "double-nat"}

// normKind maps the site kinds that behave like a cone router for TCP.
func normKind(k string) string {
	switch k {
	case "udp-blocked", "upnp":
		return "cone"
	}
	return k
}

// Crosses reports whether TCP simultaneous open connects hosts at sites of
// kinds a and b (the kinds of LAB.md), as measured in the lab, when each
// side predicts the other's public port to be its local port, without or
// with the low-TTL first SYN.
func Crosses(a, b string, lowTTL bool) bool {
	a, b = normKind(a), normKind(b)
	i := 0
	if lowTTL {
		i = 1
	}
	in := func(x, y string) bool {
		for _, k := range crossTable[x][i] {
			if k == y {
				return true
			}
		}
		return false
	}
	return in(a, b) || in(b, a)
}
