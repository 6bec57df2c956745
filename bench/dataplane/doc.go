// Package dataplane measures PVC's data plane against a reference and
// against plain wireguard-go, the way the PVC paper's Figures 4 and 5 did
// (NetPIPE throughput and latency against message size), in one run on
// the same two lab hosts: two public hosts of the network lab
// (e2e/netlab) joined by a veth through the lab's Internet bridge.
//
//   - reference: NPtcp between the hosts' own addresses, no overlay;
//   - pvc: the real pvcd binaries (a broker, the master's pvcd on one host,
//     an enrolled pvcd on the other), NPtcp between the 240.x addresses;
//   - wireguard-go: the stock wireguard-go of the module's own version
//     with a kernel TUN, configured with wg(8), NPtcp between its
//     addresses.
//
// Each is measured unshaped and with both hosts' links shaped to 1 Gbit/s
// (tbf), three NPtcp runs each (medians), interleaved so that the noise
// of a shared machine spreads over all three. The benchmark also measures
// the first TCP connection to a never-contacted peer and pvcd's resident
// memory with 50 peers known (idle) and after the transfers.
//
// `make bench` runs it (root; without root or a tool it skips and says
// which). It writes CSV files and PNG plots into bench/results/dataplane/.
// docs/dataplane.md shows the figures of a sample run.
package dataplane
