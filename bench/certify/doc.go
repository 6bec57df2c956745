// Package certifybench reproduces the saboteur experiment of the PVC
// paper's Figure 8 with the real certify.Certifier on the simulated pool
// of certify/sim: 70 hosts of which 10% always return a wrong result, a
// spot-check every 10 job slots; how many jobs are executed until every
// saboteur is blacklisted (the median over 100 seeded runs, with p10/p90
// and min/max), for spot-checking alone, voting (m+1 = 2) and
// credibility-based voting, and the error rate of the accepted results and
// replicas per accepted result of each policy. `make bench` runs it
// (BenchmarkFigure8); it writes CSV and PNG into bench/results/certify.
package certifybench
