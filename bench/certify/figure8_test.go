package certifybench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pvc-project/pvc/certify"
	"github.com/pvc-project/pvc/certify/sim"
	"github.com/pvc-project/pvc/internal/plot"
)

const (
	hosts     = 70
	saboteurs = 7 // 10%
	spotEvery = 10
	seeds     = 100
	paper     = 201 // the seed paper's jobs until every saboteur was caught
)

type policy struct {
	name    string
	short   string // in the chart's legend
	cfg     certify.Config
	collude bool
}

var (
	spotOnly = policy{name: "spot-checks only (1 replica)", short: "spot-checks only", cfg: certify.Config{Replicas: 1, SpotEvery: spotEvery}}
	voting   = policy{name: "voting m+1=2 + spot-checks", short: "voting", cfg: certify.Config{Replicas: 2, SpotEvery: spotEvery}}
	cred01   = policy{name: "credibility eps=0.01 + spot-checks", short: "credibility", cfg: certify.Config{Policy: certify.PolicyCredibility, TargetError: 0.01, SpotEvery: spotEvery}}
	cred05   = policy{name: "credibility eps=0.05 + spot-checks", cfg: certify.Config{Policy: certify.PolicyCredibility, TargetError: 0.05, SpotEvery: spotEvery}}
)

func f(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }

// BenchmarkFigure8 runs the experiment and writes figure8.csv,
// figure8.png, runs.csv and policies.csv into bench/results/certify.
func BenchmarkFigure8(b *testing.B) {
	dir := filepath.Join("..", "results", "certify")
	for b.Loop() {
		if err := figure8(b, dir); err != nil {
			b.Fatal(err)
		}
	}
}

func figure8(b *testing.B, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// 1. Jobs executed until every saboteur is caught (runs stop then).
	chart := plot.Chart{
		Title:  fmt.Sprintf("%d hosts, %d saboteurs, spot-check every %d jobs, %d runs", hosts, saboteurs, spotEvery, seeds),
		XLabel: "jobs executed (every task: replicas, re-runs and spot-checks)", YLabel: "saboteurs blacklisted", LogX: true,
	}
	var curveRows, runRows, polRows [][]string
	for _, p := range []policy{spotOnly, voting, cred01} {
		e := sim.Experiment{Hosts: hosts, Saboteurs: saboteurs, Jobs: 50000, Checks: 50, StopWhenDetected: true, Config: p.cfg}
		s, outs, err := e.Runs(seeds)
		if err != nil {
			return err
		}
		if s.Undetected > 0 {
			return fmt.Errorf("%s: %d runs never caught every saboteur", p.name, s.Undetected)
		}
		var xs, ys []float64
		for i := range s.Curve {
			xs, ys = append(xs, s.Curve[i]), append(ys, float64(i+1))
			curveRows = append(curveRows, []string{p.name, strconv.Itoa(i + 1), f(s.Curve[i]), f(s.CurveP10[i]), f(s.CurveP90[i])})
		}
		chart.Series = append(chart.Series, plot.Series{Name: p.short + " median", X: xs, Y: ys})
		if p.name == spotOnly.name || p.name == voting.name {
			var lo, hi []float64
			for i := range s.Curve {
				lo, hi = append(lo, s.CurveP10[i]), append(hi, s.CurveP90[i])
			}
			chart.Series = append(chart.Series,
				plot.Series{Name: p.short + " p10", X: lo, Y: ys},
				plot.Series{Name: p.short + " p90", X: hi, Y: ys})
		}
		for _, o := range outs {
			runRows = append(runRows, []string{p.name, strconv.FormatUint(o.Seed, 10), strconv.Itoa(o.AllDetectedAt),
				strconv.Itoa(o.Accepted), strconv.Itoa(o.WrongAccepted), strconv.Itoa(o.ReplicaTasks), strconv.Itoa(o.HonestBlamed)})
		}
		b.Logf("%-36s all %d saboteurs caught after a median of %6.1f jobs executed (p10 %g, p90 %g, min %g, max %g; paper: %d); honest hosts blamed %d",
			p.name, saboteurs, s.Median, s.P10, s.P90, s.Min, s.Max, paper, s.HonestBlamed)
		short := strings.Fields(p.name)[0]
		b.ReportMetric(s.Median, "jobs-to-catch-all-"+short)
	}
	b.Logf("reference: the paper's spot-checker caught every saboteur after %d jobs", paper)
	chart.Series = append(chart.Series, plot.Series{Name: "paper: all caught", X: []float64{paper}, Y: []float64{saboteurs}})
	if err := chart.WritePNG(filepath.Join(dir, "figure8.png")); err != nil {
		return err
	}
	if err := plot.WriteCSV(filepath.Join(dir, "figure8.csv"), []string{"policy", "saboteurs_detected", "median_jobs_executed", "p10", "p90"}, curveRows); err != nil {
		return err
	}
	if err := plot.WriteCSV(filepath.Join(dir, "runs.csv"), []string{"policy", "seed", "jobs_until_all_detected", "accepted", "wrong_accepted", "replica_tasks", "honest_blamed"}, runRows); err != nil {
		return err
	}

	// 2. Error rate and cost over a long run: 4000 jobs certified per run.
	colVote, colCred := voting, cred01
	colVote.collude, colVote.name = true, voting.name+", colluding saboteurs"
	colCred.collude, colCred.name = true, cred01.name+", colluding saboteurs"
	for _, p := range []policy{spotOnly, voting, cred01, cred05, colVote, colCred} {
		e := sim.Experiment{Hosts: hosts, Saboteurs: saboteurs, Collude: p.collude, Jobs: 4000, Checks: 50, Config: p.cfg}
		s, _, err := e.Runs(seeds)
		if err != nil {
			return err
		}
		// The cost in the first 500 jobs, before the hosts have a record.
		e.Jobs = 500
		early, _, err := e.Runs(seeds)
		if err != nil {
			return err
		}
		polRows = append(polRows, []string{p.name, strconv.FormatBool(p.collude), strconv.Itoa(s.Accepted), strconv.Itoa(s.WrongAccepted),
			f(s.ErrorRate), f(early.ReplicasPerAccepted), f(s.ReplicasPerAccepted), strconv.Itoa(s.NoMajority), strconv.Itoa(s.HonestBlamed)})
		b.Logf("%-58s accepted %6d, wrong %4d (error rate %.2e), replicas per accepted result %.3f over 4000 jobs (%.3f over the first 500), no decision %d, honest blamed %d",
			p.name, s.Accepted, s.WrongAccepted, s.ErrorRate, s.ReplicasPerAccepted, early.ReplicasPerAccepted, s.NoMajority, s.HonestBlamed)
	}
	return plot.WriteCSV(filepath.Join(dir, "policies.csv"),
		[]string{"policy", "colluding", "accepted", "wrong_accepted", "error_rate", "replicas_per_accepted_first_500", "replicas_per_accepted_4000", "no_decision", "honest_blamed"}, polRows)
}
