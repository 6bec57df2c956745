// Package netlab builds PVC's network lab: an "Internet" and sites behind
// real kernel NATs and firewalls, made of network namespaces, veth pairs, a
// bridge, iptables rules and tc, on one Linux machine (root needed).
//
// Address plan (see LAB.md in the steering repository):
//
//	the Internet   203.0.113.0/24: a bridge in namespace pvcID-inet;
//	               Internet hosts (brokers, servers) at .10-.99, the lab's
//	               STUN server at .2 and .3, site WAN addresses from .100
//	site LANs      198.18.N.0/24 for the Nth site: router .1, hosts .2 and up
//	carrier NAT    198.19.N.0/24 between the two routers of a double-nat site
//	the overlay    240.0.0.0/4 is PVC's own and never used by the lab
//
// Every namespace is named pvcID-ROLE with a per-run ID, so parallel runs
// never collide. Processes started in the lab are remembered by PID in the
// run's directory under /run/pvc-lab, and Close ends them, deletes the
// namespaces and removes /etc/netns entries. Sweep removes what a run whose
// process died left behind, recognised by its ID and its owner's PID file,
// never by guessing.
//
// Link shaping: this machine's kernel has no netem qdisc, so the lab adds
// delay and loss with an NFQUEUE "delay line" run by the process that built
// the lab (each packet's verdict is held for the delay, in order; a random
// fraction is dropped), and rate limits with tbf, on both directions of a
// site's WAN link.
package netlab
