package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"

	"github.com/pvc-project/pvc/certify"
)

// Experiment is one configuration of the saboteur experiment.
type Experiment struct {
	Hosts, Saboteurs int
	Collude          bool
	Jobs             int // jobs to certify in one run
	Checks           int // spot-check jobs with known answers in the pool; 0: re-run accepted jobs
	// StopWhenDetected ends a run when every saboteur is blacklisted.
	StopWhenDetected bool
	Config           certify.Config
}

// Outcome is one seeded run.
type Outcome struct {
	Seed uint64
	// DetectedAt[i] is the number of tasks run when the (i+1)-th saboteur
	// was blacklisted.
	DetectedAt []int
	// AllDetectedAt is DetectedAt's last entry when every saboteur was
	// caught, else -1.
	AllDetectedAt  int
	Accepted       int
	WrongAccepted  int // accepted results that differ from Correct
	NoMajority     int
	Failed         int
	ReplicaTasks   int
	Executions     int
	HonestBlamed   int // honest hosts blacklisted
	SaboteursFound int
}

// Run runs the experiment once with the given seed.
func (e Experiment) Run(seed uint64) (Outcome, error) {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	pool := NewPool(e.Hosts, e.Saboteurs, e.Collude, rng)
	o := Outcome{Seed: seed, AllDetectedAt: -1}
	cfg := e.Config
	cfg.Rand = rand.New(rand.NewPCG(seed, 7))
	if cfg.Window == 0 {
		cfg.Window = 1
	}
	cfg.OnBlacklist = func(host string, _ certify.Evidence) {
		if pool.Saboteur(host) {
			o.DetectedAt = append(o.DetectedAt, pool.Executions)
			o.SaboteursFound++
		} else {
			o.HonestBlamed++
		}
	}
	if e.StopWhenDetected {
		cfg.Stop = func() bool { return o.SaboteursFound == e.Saboteurs }
	}
	c, err := certify.New(pool, certify.NewState(), cfg)
	if err != nil {
		return o, err
	}
	jf := &certify.JobFile{}
	for i := range e.Jobs {
		jf.Jobs = append(jf.Jobs, certify.Job{Name: fmt.Sprintf("j%05d", i), Command: fmt.Sprintf("j%05d", i)})
	}
	for i := range e.Checks {
		n := fmt.Sprintf("c%03d", i)
		jf.Checks = append(jf.Checks, certify.Job{Name: n, Command: n, Expect: Correct(n)})
	}
	rep, err := c.Run(context.Background(), jf)
	if err != nil {
		return o, err
	}
	for _, r := range rep.Results {
		if r.Status == certify.StatusAccepted && string(r.Output) != string(Correct(r.Job)) {
			o.WrongAccepted++
		}
	}
	o.Accepted, o.NoMajority, o.Failed = rep.Accepted, rep.NoMajority, rep.Failed
	o.ReplicaTasks, o.Executions = rep.ReplicaTasks, rep.Executions
	if o.SaboteursFound == e.Saboteurs {
		o.AllDetectedAt = o.DetectedAt[len(o.DetectedAt)-1]
	}
	return o, nil
}

// Summary aggregates the runs of one experiment.
type Summary struct {
	Runs                       int
	Undetected                 int // runs in which some saboteur was never caught
	Median, P10, P90, Min, Max float64
	Accepted, WrongAccepted    int
	ErrorRate                  float64 // WrongAccepted / Accepted
	ReplicasPerAccepted        float64
	HonestBlamed               int
	NoMajority                 int
	// Curve[i] is the median over runs of the tasks run when i+1
	// saboteurs had been caught (runs that never caught them count as
	// +Inf, so the median can be missing: -1).
	Curve, CurveP10, CurveP90 []float64
}

// Runs runs the experiment with seeds 1..n and summarises.
func (e Experiment) Runs(n int) (Summary, []Outcome, error) {
	var outs []Outcome
	for s := 1; s <= n; s++ {
		o, err := e.Run(uint64(s))
		if err != nil {
			return Summary{}, nil, fmt.Errorf("seed %d: %w", s, err)
		}
		outs = append(outs, o)
	}
	return Summarize(e.Saboteurs, outs), outs, nil
}

// Summarize aggregates outcomes.
func Summarize(saboteurs int, outs []Outcome) Summary {
	s := Summary{Runs: len(outs)}
	var all []float64
	tasks := 0
	for _, o := range outs {
		if o.AllDetectedAt < 0 {
			s.Undetected++
			all = append(all, inf)
		} else {
			all = append(all, float64(o.AllDetectedAt))
		}
		s.Accepted += o.Accepted
		s.WrongAccepted += o.WrongAccepted
		s.HonestBlamed += o.HonestBlamed
		s.NoMajority += o.NoMajority
		tasks += o.ReplicaTasks
	}
	s.Median, s.P10, s.P90 = Quantile(all, 0.5), Quantile(all, 0.1), Quantile(all, 0.9)
	sort.Float64s(all)
	if len(all) > 0 {
		s.Min, s.Max = all[0], all[len(all)-1]
	}
	if s.Accepted > 0 {
		s.ErrorRate = float64(s.WrongAccepted) / float64(s.Accepted)
		s.ReplicasPerAccepted = float64(tasks) / float64(s.Accepted)
	}
	for i := range saboteurs {
		var xs []float64
		for _, o := range outs {
			if i < len(o.DetectedAt) {
				xs = append(xs, float64(o.DetectedAt[i]))
			} else {
				xs = append(xs, inf)
			}
		}
		s.Curve = append(s.Curve, Quantile(xs, 0.5))
		s.CurveP10 = append(s.CurveP10, Quantile(xs, 0.1))
		s.CurveP90 = append(s.CurveP90, Quantile(xs, 0.9))
	}
	return s
}

var inf = 1e308

// Quantile returns the q-quantile (nearest rank) of xs, or -1 if it is
// +Inf (a run that never got there) or xs is empty.
func Quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return -1
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	i := int(q*float64(len(s)) + 0.5)
	i = min(max(i-1, 0), len(s)-1)
	if q == 0.5 && len(s)%2 == 0 {
		a, b := s[len(s)/2-1], s[len(s)/2]
		if a >= inf || b >= inf {
			return -1
		}
		return (a + b) / 2
	}
	if s[i] >= inf {
		return -1
	}
	return s[i]
}
