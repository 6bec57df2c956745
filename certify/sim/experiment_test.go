package sim

import (
	"testing"

	"github.com/pvc-project/pvc/certify"
)

// TestFigure8Properties checks the saboteur experiment (70 hosts, 7
// saboteurs, a spot-check every 10 jobs) on fewer seeds than the
// benchmark: the median jobs until every saboteur is caught lies in the
// range the model predicts, voting accepts no wrong result, and
// credibility-based voting needs fewer replicas once hosts have a record.
func TestFigure8Properties(t *testing.T) {
	const seeds = 30
	detect := func(cfg certify.Config) Summary {
		e := Experiment{Hosts: 70, Saboteurs: 7, Jobs: 20000, Checks: 20, StopWhenDetected: true, Config: cfg}
		s, _, err := e.Runs(seeds)
		if err != nil {
			t.Fatal(err)
		}
		if s.Undetected != 0 || s.HonestBlamed != 0 {
			t.Fatalf("%+v: %d runs left a saboteur undetected, %d honest hosts blamed", cfg, s.Undetected, s.HonestBlamed)
		}
		if !(s.P10 <= s.Median && s.Median <= s.P90 && s.Min <= s.P10 && s.P90 <= s.Max) {
			t.Errorf("%+v: spread out of order: %+v", cfg, s)
		}
		return s
	}
	// Spot-checks alone: a check lands on a random host, so catching all 7
	// of 70 takes about Σ (70-i)/(7-i) ≈ 170 checks, ~1700 jobs; the
	// median is a little lower.
	spot := detect(certify.Config{Replicas: 1, SpotEvery: 10})
	if spot.Median < 1000 || spot.Median > 2500 {
		t.Errorf("spot-checks only: median %v jobs: want 1000-2500", spot.Median)
	}
	if spot.WrongAccepted == 0 {
		t.Errorf("spot-checks only accepted no wrong result: the saboteurs' results before detection should be")
	}
	// Voting with losers blacklisted catches a saboteur the first time it
	// runs a replica: a coupon collector over 7 of 70 hosts, ~180 tasks.
	vote := detect(certify.Config{Replicas: 2, SpotEvery: 10})
	if vote.Median < 80 || vote.Median > 300 || vote.WrongAccepted != 0 {
		t.Errorf("voting: median %v jobs (want 80-300), %d wrong accepted (want 0)", vote.Median, vote.WrongAccepted)
	}
	cred := detect(certify.Config{Policy: certify.PolicyCredibility, SpotEvery: 10})
	if cred.WrongAccepted != 0 || cred.Median > 400 {
		t.Errorf("credibility: median %v, %d wrong accepted", cred.Median, cred.WrongAccepted)
	}

	long := func(cfg certify.Config, collude bool) Summary {
		e := Experiment{Hosts: 70, Saboteurs: 7, Collude: collude, Jobs: 3000, Checks: 20, Config: cfg}
		s, _, err := e.Runs(8)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	v := long(certify.Config{Replicas: 2, SpotEvery: 10}, false)
	c := long(certify.Config{Policy: certify.PolicyCredibility, TargetError: 0.05, SpotEvery: 10}, false)
	if v.WrongAccepted != 0 || c.WrongAccepted != 0 {
		t.Errorf("wrong results accepted: voting %d, credibility %d; want 0", v.WrongAccepted, c.WrongAccepted)
	}
	if v.ReplicasPerAccepted < 2 || c.ReplicasPerAccepted >= v.ReplicasPerAccepted {
		t.Errorf("replicas per accepted result: voting %.3f, credibility %.3f; want voting ≥ 2 and credibility below it",
			v.ReplicasPerAccepted, c.ReplicasPerAccepted)
	}
	// Colluding saboteurs (all return the same wrong result) defeat m+1
	// voting when two of them are paired before they are caught.
	cv := long(certify.Config{Replicas: 2, SpotEvery: 10}, true)
	if cv.Accepted == 0 || cv.ErrorRate > 0.01 {
		t.Errorf("colluding saboteurs: voting error rate %v", cv.ErrorRate)
	}
}

func TestQuantile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	if Quantile(xs, 0.5) != 3 || Quantile(xs, 0.1) != 1 || Quantile(xs, 0.9) != 5 || Quantile(nil, 0.5) != -1 {
		t.Errorf("quantiles of %v: %v %v %v", xs, Quantile(xs, 0.5), Quantile(xs, 0.1), Quantile(xs, 0.9))
	}
	if Quantile([]float64{1, 2, 3, 4}, 0.5) != 2.5 || Quantile([]float64{1, inf}, 0.5) != -1 {
		t.Errorf("even-length median")
	}
}

func TestPoolIsDeterministic(t *testing.T) {
	e := Experiment{Hosts: 20, Saboteurs: 2, Jobs: 200, Config: certify.Config{Replicas: 2, SpotEvery: 10}}
	a, err := e.Run(42)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := e.Run(42)
	if a.Executions != b.Executions || a.AllDetectedAt != b.AllDetectedAt || len(a.DetectedAt) != len(b.DetectedAt) {
		t.Errorf("two runs with one seed differ: %+v %+v", a, b)
	}
}
