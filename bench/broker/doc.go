// Package broker measures pvc-broker at scale and its relay, as issue 5
// asks (figures as ratios and counts, references measured in the same
// run):
//
//   - BenchmarkSessions: one replica (the real pvc-broker binary, a child
//     process, so that only its memory is counted) holding 10,000
//     authenticated peer sessions on loopback: resident memory per session
//     from /proc, and the signalling round trip p50/p99 between two peers
//     while it holds them;
//   - BenchmarkJoinStorm: 1,000 peers (real broker clients in this
//     process, sharing one verification cache, see client.VerifyCache)
//     connecting at once to a fresh pvc-broker: time until every peer's
//     subscription has seen every other, the signalling round trip
//     p50/p99 between two other peers during the storm and after it, and
//     what one real host pays to verify the 1,000 certificates itself;
//   - BenchmarkRelayLab (root): relay throughput of one peer pair through
//     pvc-broker on an Internet host of the network lab (e2e/netlab), over
//     the peers' TLS sessions, as a ratio to a plain TCP stream between the
//     same two namespaces, medians of interleaved runs.
//
// `make bench` runs them (`go test -run '^$' -bench . -benchtime 1x`). Each
// writes its figures into bench/results/broker/*.csv; docs/broker.md shows
// the figures of a run and how to reproduce them. None runs as a test.
package broker
