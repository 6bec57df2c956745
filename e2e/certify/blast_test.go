package certify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
)

// blastWorkload writes a small generated nucleotide database (makeblastdb)
// and query files into dir, and a job file with one blastn job per query
// and spot-check jobs whose expected answers this (trusted) machine
// computes. It returns the job file's path and each job's honest result.
func blastWorkload(t *testing.T, dir string, jobs, checks int) (string, map[string][]byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(2026, 8))
	bases := "ACGT"
	randSeq := func(n int) []byte {
		s := make([]byte, n)
		for i := range s {
			s[i] = bases[rng.IntN(4)]
		}
		return s
	}
	var db bytes.Buffer
	var seqs [][]byte
	for i := range 80 {
		s := randSeq(1200)
		seqs = append(seqs, s)
		fmt.Fprintf(&db, ">s%03d generated sequence %d\n%s\n", i, i, s)
	}
	must(t, os.WriteFile(filepath.Join(dir, "db.fa"), db.Bytes(), 0o644))
	must(t, os.MkdirAll(filepath.Join(dir, "db"), 0o755))
	if out, err := exec.Command("makeblastdb", "-in", filepath.Join(dir, "db.fa"), "-dbtype", "nucl",
		"-out", filepath.Join(dir, "db", "seqs")).CombinedOutput(); err != nil {
		t.Fatalf("makeblastdb: %v\n%s", err, out)
	}
	// A query is a stretch of a database sequence with about 4% of its
	// bases changed, so that blastn finds it with an identity below 100%.
	query := func(name string) {
		src := seqs[rng.IntN(len(seqs))]
		off := rng.IntN(len(src) - 400)
		q := slices.Clone(src[off : off+300+rng.IntN(100)])
		for i := range q {
			if rng.IntN(25) == 0 {
				q[i] = bases[(strings.IndexByte(bases, q[i])+1+rng.IntN(3))%4]
			}
		}
		must(t, os.WriteFile(filepath.Join(dir, name+".fa"), fmt.Appendf(nil, ">%s\n%s\n", name, q), 0o644))
	}
	cmd := func(name string) string {
		return fmt.Sprintf("blastn -query %s.fa -db db/seqs -outfmt 6 -num_threads 1 -max_target_seqs 5", name)
	}
	honest := func(c string) []byte {
		x := exec.Command("sh", "-c", c)
		x.Dir = dir
		out, err := x.Output()
		if err != nil || len(out) == 0 {
			t.Fatalf("honest run of %q: %v (output %q)", c, err, out)
		}
		return out
	}
	var jf strings.Builder
	want := map[string][]byte{}
	for i := range jobs {
		n := fmt.Sprintf("q%02d", i+1)
		query(n)
		fmt.Fprintf(&jf, "job %s %s\n", n, cmd(n))
		want[n] = honest(cmd(n))
	}
	for i := range checks {
		n := fmt.Sprintf("known%02d", i+1)
		query(n)
		must(t, os.WriteFile(filepath.Join(dir, n+".expect"), honest(cmd(n)), 0o644))
		fmt.Fprintf(&jf, "check %s %s.expect %s\n", n, n, cmd(n))
	}
	path := filepath.Join(dir, "blast.jobs")
	must(t, os.WriteFile(path, []byte(jf.String()), 0o644))
	return path, want
}

// blastRun is what a lab run of pvc-certify over Slurm needs besides the
// pool: the BLAST workload with its honest answers, the job wrapper every
// node runs jobs through and the saboteurs' scripts mounted over it, and
// a freshly built pvc-certify.
type blastRun struct {
	dir       string // everything below, removed at the end
	work      string // the job file's directory (shared by every node)
	jobFile   string
	want      map[string][]byte // job name -> honest result
	wrapper   string
	saboteurs []string
	binds     map[string][2]string // saboteur node -> {its script, wrapper}
	bin       string               // pvc-certify
}

// newBLASTRun prepares a workload of jobs BLAST jobs and checks
// known-answer checks, and a corrupting wrapper for each saboteur.
func newBLASTRun(t *testing.T, jobs, checks int, saboteurs []string) *blastRun {
	t.Helper()
	dir, err := os.MkdirTemp("", "pvc-certify-lab-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))
	r := &blastRun{dir: dir, work: filepath.Join(dir, "work"), saboteurs: saboteurs, binds: map[string][2]string{}}
	must(t, os.MkdirAll(r.work, 0o755))
	r.jobFile, r.want = blastWorkload(t, r.work, jobs, checks)

	// Every node runs jobs through the same wrapper path; on a
	// saboteur's node another file is mounted over it.
	r.wrapper = filepath.Join(dir, "job-wrapper")
	must(t, os.WriteFile(r.wrapper, []byte("#!/bin/sh\nexec \"$@\"\n"), 0o755))
	for i, n := range saboteurs {
		sab := filepath.Join(dir, "sabotage-"+n)
		// Lower the percent identity column by a node-specific amount.
		script := fmt.Sprintf("#!/bin/sh\n\"$@\" | awk -v OFS='\\t' '{ $3 = sprintf(\"%%.3f\", $3 - 0.%d); print }'\n", i+3)
		must(t, os.WriteFile(sab, []byte(script), 0o755))
		r.binds[n] = [2]string{sab, r.wrapper}
	}
	r.bin = buildCertify(t, dir)
	return r
}

// blastFigures are the figures of a certification run, from its report.
type blastFigures struct {
	Jobs, Accepted      int
	TasksRun            int     `json:"tasks_run"`
	ReplicaTasks        int     `json:"replica_tasks"`
	Checks              int     `json:"spot_checks"`
	ChecksFailed        int     `json:"spot_checks_failed"`
	ReplicasPerAccepted float64 `json:"replicas_per_accepted"`
	Rerun               int
	Blacklisted         []string
	ElapsedSeconds      float64 `json:"elapsed_seconds"`
	// The second run's (6 jobs with the first run's state).
	Second struct {
		TasksRun       int     `json:"tasks_run"`
		ElapsedSeconds float64 `json:"elapsed_seconds"`
	} `json:"-"`
}

// certify runs pvc-certify on the pool's controller host and checks the
// outcome: exactly the saboteurs blacklisted, with evidence and without
// credits; every accepted result byte-equal to the honest run's; credits
// recorded. A second run with the same state must keep the blacklisted
// nodes out (Slurm's --exclude): no re-run, nobody new blacklisted.
func (r *blastRun) certify(t *testing.T, pool *slurmPool) blastFigures {
	t.Helper()
	ctl := pool.ctl
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	state := filepath.Join(r.dir, "state.json")
	report := filepath.Join(r.dir, "report.json")
	results := filepath.Join(r.dir, "results")
	runStart := time.Now()
	out, err := ctl.Run(ctx, r.bin, "run", "--scheduler", "slurm", "--slurm-conf", pool.conf, "--slurm-wrapper", r.wrapper,
		"--slurm-poll", "100ms", "--replicas", "2", "--spot-every", "5", "--seed", "1",
		"--state", state, "--report", report, "--out", results, r.jobFile)
	runTime := time.Since(runStart)
	t.Logf("pvc-certify run (%v):\n%s", runTime.Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("pvc-certify run: %v", err)
	}
	hostsOut, err := ctl.Run(ctx, r.bin, "hosts", "--state", state)
	t.Logf("pvc-certify hosts:\n%s", hostsOut)
	must(t, err)

	var rep blastFigures
	data, err := os.ReadFile(report)
	must(t, err)
	must(t, json.Unmarshal(data, &rep))
	if rep.Jobs != len(r.want) || rep.Accepted != len(r.want) {
		t.Errorf("report: %d jobs, %d accepted; want %d and %d", rep.Jobs, rep.Accepted, len(r.want), len(r.want))
	}
	slices.Sort(rep.Blacklisted)
	if !slices.Equal(rep.Blacklisted, r.saboteurs) {
		t.Errorf("blacklisted %v, want exactly the saboteurs %v", rep.Blacklisted, r.saboteurs)
	}
	for n, w := range r.want {
		got, err := os.ReadFile(filepath.Join(results, n+".out"))
		if err != nil {
			t.Errorf("accepted result of %s: %v", n, err)
			continue
		}
		if !bytes.Equal(got, w) {
			t.Errorf("accepted result of %s differs from the honest run:\n got %q\nwant %q", n, got, w)
		}
	}
	var st struct {
		Hosts map[string]struct {
			Blacklisted bool
			Evidence    *struct {
				Kind, Job string
				Got       string `json:"got_sha256"`
			}
			CPUSeconds float64 `json:"cpu_seconds"`
			Accepted   int
		}
	}
	data, err = os.ReadFile(state)
	must(t, err)
	must(t, json.Unmarshal(data, &st))
	credited := 0.0
	for _, n := range pool.names {
		h := st.Hosts[n]
		isSab := slices.Contains(r.saboteurs, n)
		if h.Blacklisted != isSab {
			t.Errorf("host %s: blacklisted %v, saboteur %v", n, h.Blacklisted, isSab)
		}
		if isSab && (h.Evidence == nil || h.Evidence.Got == "" || h.Evidence.Job == "") {
			t.Errorf("saboteur %s blacklisted without evidence", n)
		}
		if isSab && h.Accepted != 0 {
			t.Errorf("saboteur %s had %d results accepted", n, h.Accepted)
		}
		credited += h.CPUSeconds
	}
	if credited <= 0 {
		t.Errorf("no CPU seconds credited to any host")
	}
	// A second run with the same state: Slurm's --exclude keeps the
	// blacklisted nodes out, so nothing disagrees and nobody is new on
	// the blacklist.
	lines, err := os.ReadFile(r.jobFile)
	must(t, err)
	second := filepath.Join(r.work, "second.jobs")
	must(t, os.WriteFile(second, []byte(strings.Join(strings.SplitAfter(string(lines), "\n")[:6], "")), 0o644))
	report2 := filepath.Join(r.dir, "report2.json")
	out, err = ctl.Run(ctx, r.bin, "run", "--scheduler", "slurm", "--slurm-conf", pool.conf, "--slurm-wrapper", r.wrapper,
		"--slurm-poll", "100ms", "--spot-every", "0", "--state", state, "--report", report2, "--out", "", second)
	t.Logf("second pvc-certify run:\n%s", out)
	must(t, err)
	var rep2 struct {
		Accepted, Rerun int
		TasksRun        int `json:"tasks_run"`
		Blacklisted     []string
		ElapsedSeconds  float64 `json:"elapsed_seconds"`
		Results         []struct {
			Job   string
			Hosts []string
		}
	}
	data, err = os.ReadFile(report2)
	must(t, err)
	must(t, json.Unmarshal(data, &rep2))
	if rep2.Accepted != 6 || rep2.Rerun != 0 || len(rep2.Blacklisted) != 0 {
		t.Errorf("second run: %d accepted, %d re-run, blacklisted %v: want 6, 0, none", rep2.Accepted, rep2.Rerun, rep2.Blacklisted)
	}
	for _, res := range rep2.Results {
		for _, h := range res.Hosts {
			if slices.Contains(r.saboteurs, h) {
				t.Errorf("second run: job %s ran on blacklisted %s", res.Job, h)
			}
		}
	}
	rep.Second.TasksRun, rep.Second.ElapsedSeconds = rep2.TasksRun, rep2.ElapsedSeconds
	return rep
}

// TestSlurmBLASTSaboteurs runs a BLAST workload through pvc-certify on a
// real Slurm pool of six slurmd nodes in the lab, two of which are
// saboteurs (their job wrapper corrupts blastn's output, each its own
// way). The saboteurs must end up blacklisted with evidence, no honest
// node may be, and every accepted result must equal an honest run's.
func TestSlurmBLASTSaboteurs(t *testing.T) {
	netlab.RequireRoot(t)
	netlab.RequireTools(t, "munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel",
		"makeblastdb", "blastn", "nsenter", "unshare", "awk")
	begin := time.Now()
	lab := netlab.New(t, netlab.Spec{Sites: []netlab.SiteSpec{{Name: "grid", Kind: netlab.Cone, Hosts: 7}}})
	site := lab.Site("grid")
	ctl := site.Hosts[0]
	nodes := map[string]*netlab.Host{}
	var names []string
	for i, h := range site.Hosts[1:] {
		n := fmt.Sprintf("n%d", i+1)
		nodes[n] = h
		names = append(names, n)
	}
	r := newBLASTRun(t, 18, 3, []string{"n2", "n5"})
	pool := startSlurm(t, filepath.Join(r.dir, "slurm"), underlay(ctl, names, nodes, r.binds))
	t.Logf("lab and Slurm pool (%d slurmd) up in %v", len(names), time.Since(begin).Round(time.Millisecond))
	rep := r.certify(t, pool)
	t.Logf("BLAST on Slurm: %d jobs accepted, %d tasks run (%d replicas for jobs, %.2f per accepted result, %d re-runs, %d spot-checks of which %d failed), saboteurs %v blacklisted, %.1f s certifying, %v in all",
		rep.Accepted, rep.TasksRun, rep.ReplicaTasks, rep.ReplicasPerAccepted, rep.Rerun, rep.Checks, rep.ChecksFailed,
		rep.Blacklisted, rep.ElapsedSeconds, time.Since(begin).Round(time.Millisecond))
	pool.stop(t)
}
