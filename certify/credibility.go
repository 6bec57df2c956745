package certify

import "math"

// HostCredibility is Sarmenta's credibility of a host (CrP) under
// spot-checking with blacklisting: the probability that a result it
// returns is correct, given that it passed `passed` spot-checks and that at
// most a fraction f of hosts are saboteurs. With no check passed it is
// 1-f; after k checks it is 1 - f/((1-f)·k·e).
func HostCredibility(f float64, passed int) float64 {
	if passed <= 0 {
		return 1 - f
	}
	return 1 - f/((1-f)*float64(passed)*math.E)
}

// GroupCredibility returns, for each group of equal results, the
// probability that it is the correct one (Sarmenta's CrR): groups[i] holds
// the credibilities of the hosts that returned the i-th result.
//
//	CrR(a) = P(a good)·Π_{b≠a} P(b bad) / (Π_g P(g bad) + Σ_g P(g good)·Π_{h≠g} P(h bad))
//
// where P(g good) is the product of its hosts' credibilities and P(g bad)
// the product of their complements.
func GroupCredibility(groups [][]float64) []float64 {
	good := make([]float64, len(groups))
	bad := make([]float64, len(groups))
	for i, g := range groups {
		good[i], bad[i] = 1, 1
		for _, c := range g {
			good[i] *= c
			bad[i] *= 1 - c
		}
	}
	allBad := 1.0
	for _, b := range bad {
		allBad *= b
	}
	num := make([]float64, len(groups))
	den := allBad
	for i := range groups {
		num[i] = good[i]
		for j := range groups {
			if j != i {
				num[i] *= bad[j]
			}
		}
		den += num[i]
	}
	out := make([]float64, len(groups))
	for i := range num {
		if den > 0 {
			out[i] = num[i] / den
		}
	}
	return out
}

// replicasNeeded returns how many more hosts of credibility base must join
// group best, agreeing with it, for its credibility to reach target; at
// most limit (and at least 1).
func replicasNeeded(groups [][]float64, best int, base, target float64, limit int) int {
	g := make([][]float64, len(groups))
	for i := range groups {
		g[i] = append([]float64(nil), groups[i]...)
	}
	if len(g) == 0 {
		g = [][]float64{nil}
		best = 0
	}
	for n := 1; n < limit; n++ {
		g[best] = append(g[best], base)
		if GroupCredibility(g)[best] >= target {
			return n
		}
	}
	return max(limit, 1)
}
