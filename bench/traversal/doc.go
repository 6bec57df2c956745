// Package traversalbench measures, per traversal technique, how fast a
// never-contacted peer becomes reachable across a WAN with a 20 ms round
// trip (every site's link delayed by 5 ms each way with the lab's delay
// line, so site to site and site to broker are both 20 ms round trips):
//
//   - connect: from the first packet to the peer (an application's TCP
//     SYN to its 240.x address) until the application's connect returns;
//     that first exchange goes over the broker relay while the techniques
//     run (target: one relay round trip + 10 ms, i.e. ≤ 30 ms here);
//   - path: until `pvcd peers` on the initiator shows the technique's path
//     carrying the traffic (target ≤ 1 s).
//
// Pairs: direct (cone → public), upnp (cone → upnp), punched (cone →
// cone, ICE), ttcp (udp-blocked → hostfw that blocks UDP), tcp-punch (two
// udp-blocked sites whose pvcd may use only TCP simultaneous open), relay
// (symmetric → symmetric). Each is measured three times with both pvcd of
// the pair restarted in between (medians reported). `make bench` runs it
// (root); it writes bench/results/traversal/first-connection.csv.
package traversalbench
