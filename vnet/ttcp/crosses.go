package ttcp

// crossTable is what the lab measured (BenchmarkTraversingTCPMatrix): for a
// server site kind, the client site kinds that Traversing-TCP crosses,
// without and with the server's low-TTL opening SYN (ServerConfig.OpenTTL).
// docs/traversal.md explains each row.
var crossTable = map[string][2][]string{
	// The client's own SYN reaches a public server: no injection needed.
	"public": {allKinds, allKinds},
	// The injected SYN opens the host's own firewall. A symmetric client's
	// public port is not the local port the description carries.
	"hostfw": {portKeeping, portKeeping},
	// Routers: the plain SYN/ACK is INVALID there (not translated by a NAT;
	// let out by a firewall but the client's ACK is then a new inbound flow).
	// The opening SYN makes the flow outbound; the client's retransmitted
	// SYN (after 1 s) then crosses as a reply.
	"firewall":   {nil, portKeeping},
	"cone":       {nil, portKeeping},
	"double-nat": {nil, portKeeping},
	// A new public port per destination: the client dials a port that the
	// opening SYN did not map.
	"symmetric": {nil, nil},
}

var (
	allKinds    = []string{"public", "hostfw", "firewall", "cone", "symmetric", "double-nat"}
	portKeeping = []string{"public", "hostfw", "firewall", "cone", "double-nat"}
)

// normKind maps the site kinds that behave like a cone router for TCP.
func normKind(k string) string {
	switch k {
	case "udp-blocked", "upnp":
		return "cone"
	}
	return k
}

// Crosses reports whether Traversing-TCP connects a client at a site of
// kind client to a server at a site of kind server (the kinds of LAB.md:
// public, hostfw, firewall, cone, symmetric, udp-blocked, upnp,
// double-nat), without or with the server's opening SYN, as measured in
// the lab.
func Crosses(server, client string, openingSYN bool) bool {
	row, ok := crossTable[normKind(server)]
	if !ok {
		return false
	}
	i := 0
	if openingSYN {
		i = 1
	}
	for _, k := range row[i] {
		if k == normKind(client) {
			return true
		}
	}
	return false
}
