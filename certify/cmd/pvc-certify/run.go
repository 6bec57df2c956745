package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pvc-project/pvc/certify"
	"github.com/pvc-project/pvc/certify/local"
	"github.com/pvc-project/pvc/certify/slurm"
	"github.com/pvc-project/pvc/internal/cli"
)

const runUsage = "pvc-certify run [FLAGS] JOBFILE"

const runHelp = `Runs every job of JOBFILE through the scheduler and certifies its result.

JOBFILE has one line per job (blank lines and # comments are ignored):

  job   NAME COMMAND...              a job: COMMAND's standard output is its result
  check NAME EXPECTFILE COMMAND...   a spot-check job whose correct output is EXPECTFILE

Commands run with sh -c in JOBFILE's directory. NAME is letters, digits,
'.', '_' or '-'. Without check lines, spot-checks re-run jobs accepted
earlier in the run (their accepted result is the known answer).

Policies:
  vote         --replicas m+1 copies on distinct hosts; if they disagree,
               2m+1 more on other hosts, and the majority of those (at least
               m+1) is accepted; otherwise the job is reported "no-majority".
  credibility  copies are added until one result's credibility (Sarmenta
               2002, from the spot-checks its hosts passed) reaches
               1 - --target-error, at most --max-replicas.

Every --spot-every-th job slot is a spot-check. A host that fails one, or
whose result loses a decided vote (unless --keep-losers), is blacklisted in
--state with the evidence and excluded from every later submission.

While it runs, a progress line goes to stderr after every scheduler round;
at the end the report (text, or JSON with --json) goes to stdout and the
accepted results to --out/NAME.out. Exit status: 0 when every job was
accepted, 1 when some were not (or the scheduler failed), 2 for bad input.`

type runFlags struct {
	scheduler, policy, compare, state, out, report string
	replicas, spotEvery, maxReplicas, window       int
	targetError, bound                             float64
	keepLosers, json, quiet                        bool
	seed                                           uint64
	localHosts, localParallel                      int
	localWrap                                      cli.Multi
	taskTimeout                                    time.Duration
	slurmWorkdir, slurmPartition, slurmConf        string
	slurmWrapper                                   string
	slurmPoll                                      time.Duration
}

func runVerb() cli.Verb {
	return cli.Verb{Name: "run", Summary: "run a job file through a scheduler and certify the results", Run: runCmd}
}

func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f runFlags
	fs := cli.NewFlagSet("run", runUsage, runHelp, stdout)
	fs.StringVar(&f.scheduler, "scheduler", "local", "scheduler: slurm or local")
	fs.StringVar(&f.policy, "policy", "vote", "acceptance policy: vote or credibility")
	fs.IntVar(&f.replicas, "replicas", 2, "m+1: replicas of each job in a vote's first phase (1 to 50)")
	fs.IntVar(&f.spotEvery, "spot-every", 10, "k: one job slot in k is a spot-check; 0 for none")
	fs.Float64Var(&f.targetError, "target-error", 0.01, "credibility policy: accept a result when its credibility reaches 1 - this")
	fs.Float64Var(&f.bound, "saboteur-bound", 0.1, "credibility policy: assumed upper bound of the fraction of saboteurs")
	fs.IntVar(&f.maxReplicas, "max-replicas", 0, "credibility policy: at most this many replicas per job (0: 3 × --replicas)")
	fs.IntVar(&f.window, "window", 0, "job slots submitted together (0: hosts / replicas)")
	fs.BoolVar(&f.keepLosers, "keep-losers", false, "do not blacklist hosts whose result lost a decided vote")
	fs.StringVar(&f.compare, "compare", "", "command that compares two results: CMD FILE1 FILE2, exit 0 equal, 1 different (default: byte equality)")
	fs.StringVar(&f.state, "state", "certify-state.json", "state file: blacklist with evidence, spot-check record, credits")
	fs.StringVar(&f.out, "out", "results", "directory for the accepted results (NAME.out); empty: do not write them")
	fs.StringVar(&f.report, "report", "", "also write the JSON report to this file")
	fs.BoolVar(&f.json, "json", false, "print the report as JSON")
	fs.BoolVar(&f.quiet, "quiet", false, "no progress line")
	fs.Uint64Var(&f.seed, "seed", 0, "seed for choosing spot-check jobs (0: from the clock)")
	fs.IntVar(&f.localHosts, "local-hosts", 4, "local scheduler: number of simulated hosts (local01, local02, ...)")
	fs.IntVar(&f.localParallel, "local-parallel", 0, "local scheduler: processes at once (0: number of CPUs)")
	fs.Var(&f.localWrap, "local-wrap", "local scheduler: HOST=WRAPPER, run that host's tasks as WRAPPER sh -c COMMAND (repeatable; e.g. a saboteur)")
	fs.DurationVar(&f.taskTimeout, "task-timeout", 0, "local scheduler: bound on one task (0: none)")
	fs.StringVar(&f.slurmWorkdir, "slurm-workdir", "", "slurm: directory every node sees at the same path, for scripts and results (default: .pvc-certify next to JOBFILE)")
	fs.StringVar(&f.slurmPartition, "slurm-partition", "", "slurm: partition (default: the cluster's default)")
	fs.StringVar(&f.slurmConf, "slurm-conf", "", "slurm: slurm.conf for the client commands (sets SLURM_CONF)")
	fs.StringVar(&f.slurmWrapper, "slurm-wrapper", "", "slurm: job wrapper placed before each command in the batch script")
	fs.DurationVar(&f.slurmPoll, "slurm-poll", 200*time.Millisecond, "slurm: squeue polling interval")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return cli.Usagef("run: want exactly one JOBFILE, got %d arguments", len(pos))
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	jf, err := certify.LoadJobFile(pos[0])
	if err != nil {
		return cli.Usagef("run: JOBFILE: %v", err)
	}
	st, err := certify.LoadState(f.state)
	if err != nil {
		return cli.Usagef("run: --state: %v", err)
	}
	sched, err := f.scheduler1(filepath.Dir(pos[0]))
	if err != nil {
		return err
	}
	if !f.quiet {
		cfg.Progress = func(p certify.Progress) { fmt.Fprintf(stderr, "pvc-certify: %s\n", p) }
	}
	cfg.Persist = func(s *certify.State) error { return s.Save(f.state) }
	c, err := certify.New(sched, st, cfg)
	if err != nil {
		return cli.Usagef("run: %v", err)
	}
	rep, runErr := c.Run(ctx, jf)
	if rep == nil {
		return runErr
	}
	if err := st.Save(f.state); err != nil {
		return errors.Join(runErr, err)
	}
	if f.out != "" {
		if err := writeResults(f.out, rep); err != nil {
			return errors.Join(runErr, err)
		}
	}
	if f.report != "" {
		fh, err := os.Create(f.report)
		if err != nil {
			return errors.Join(runErr, err)
		}
		err = errors.Join(rep.WriteJSON(fh), fh.Close())
		if err != nil {
			return errors.Join(runErr, err)
		}
	}
	if f.json {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if runErr != nil || err != nil {
		return errors.Join(runErr, err)
	}
	if rep.Accepted < rep.Jobs {
		return fmt.Errorf("%d of %d jobs not accepted", rep.Jobs-rep.Accepted, rep.Jobs)
	}
	return nil
}

func (f *runFlags) config() (certify.Config, error) {
	pol, err := certify.ParsePolicy(f.policy)
	if err != nil {
		return certify.Config{}, cli.Usagef("run: --policy: %v", err)
	}
	if f.replicas < 1 || f.replicas > 50 {
		return certify.Config{}, cli.Usagef("run: --replicas %d: want 1 to 50", f.replicas)
	}
	if f.targetError <= 0 || f.targetError >= 1 {
		return certify.Config{}, cli.Usagef("run: --target-error %v: want a fraction between 0 and 1 (e.g. 0.01)", f.targetError)
	}
	if f.bound <= 0 || f.bound >= 1 {
		return certify.Config{}, cli.Usagef("run: --saboteur-bound %v: want a fraction between 0 and 1 (e.g. 0.1)", f.bound)
	}
	seed := f.seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	cfg := certify.Config{
		Policy: pol, Replicas: f.replicas, SpotEvery: f.spotEvery, TargetError: f.targetError,
		SaboteurBound: f.bound, MaxReplicas: f.maxReplicas, Window: f.window, KeepLosers: f.keepLosers,
		Rand:       rand.New(rand.NewPCG(seed, seed>>1|1)),
		TaskPrefix: fmt.Sprintf("r%08x-t", uint32(time.Now().UnixNano())),
	}
	if err := cfg.Validate(); err != nil {
		return cfg, cli.Usagef("run: %v", err)
	}
	if f.compare != "" {
		cc, err := certify.ParseCommandComparator(f.compare)
		if err != nil {
			return cfg, cli.Usagef("run: --compare: %v", err)
		}
		cfg.Comparator = cc
	}
	if f.state == "" {
		return cfg, cli.Usagef("run: --state: want a file name")
	}
	for _, c := range []struct{ flag, path string }{{"--state", f.state}, {"--report", f.report}} {
		if c.path == "" {
			continue
		}
		if st, err := os.Stat(c.path); err == nil && st.IsDir() {
			return cfg, cli.Usagef("run: %s %s: is a directory, want a file", c.flag, c.path)
		}
		if st, err := os.Stat(filepath.Dir(c.path)); err != nil || !st.IsDir() {
			return cfg, cli.Usagef("run: %s %s: its directory does not exist", c.flag, c.path)
		}
	}
	for _, c := range []struct{ flag, path string }{{"--out", f.out}, {"--slurm-workdir", f.slurmWorkdir}} {
		if st, err := os.Stat(c.path); c.path != "" && err == nil && !st.IsDir() {
			return cfg, cli.Usagef("run: %s %s: not a directory", c.flag, c.path)
		}
	}
	if f.slurmPartition != "" && !certify.ValidHostName(f.slurmPartition) {
		return cfg, cli.Usagef("run: --slurm-partition %q: want a partition name without spaces or commas", f.slurmPartition)
	}
	if f.slurmWrapper != "" && strings.TrimSpace(f.slurmWrapper) == "" {
		return cfg, cli.Usagef("run: --slurm-wrapper: blank")
	}
	return cfg, nil
}

func (f *runFlags) scheduler1(jobDir string) (certify.Scheduler, error) {
	switch f.scheduler {
	case "local":
		if f.localHosts < 1 || f.localHosts > 1000 {
			return nil, cli.Usagef("run: --local-hosts %d: want 1 to 1000", f.localHosts)
		}
		if f.localParallel < 0 {
			return nil, cli.Usagef("run: --local-parallel %d: want 0 (CPUs) or more", f.localParallel)
		}
		if f.taskTimeout < 0 {
			return nil, cli.Usagef("run: --task-timeout %v: want 0 (none) or more", f.taskTimeout)
		}
		hosts := local.HostNames(f.localHosts)
		wrap := map[string][]string{}
		for _, w := range f.localWrap {
			h, cmd, ok := strings.Cut(w, "=")
			argv := strings.Fields(cmd)
			if !ok || len(argv) == 0 {
				return nil, cli.Usagef("run: --local-wrap %q: want HOST=WRAPPER", w)
			}
			found := false
			for _, x := range hosts {
				found = found || x == h
			}
			if !found {
				return nil, cli.Usagef("run: --local-wrap %q: no host %q (hosts are local01 to %s)", w, h, hosts[len(hosts)-1])
			}
			wrap[h] = argv
		}
		return local.New(local.Config{Hosts: hosts, Wrap: wrap, Parallel: f.localParallel, Timeout: f.taskTimeout})
	case "slurm":
		if f.slurmPoll <= 0 {
			return nil, cli.Usagef("run: --slurm-poll %v: want a positive duration", f.slurmPoll)
		}
		cfg := slurm.Config{WorkDir: f.slurmWorkdir, Partition: f.slurmPartition, Wrapper: f.slurmWrapper, Poll: f.slurmPoll}
		if cfg.WorkDir == "" {
			cfg.WorkDir = filepath.Join(jobDir, ".pvc-certify")
		}
		if f.slurmConf != "" {
			if st, err := os.Stat(f.slurmConf); err != nil || !st.Mode().IsRegular() {
				return nil, cli.Usagef("run: --slurm-conf %s: not a readable file", f.slurmConf)
			}
			abs, _ := filepath.Abs(f.slurmConf)
			cfg.Env = append(cfg.Env, "SLURM_CONF="+abs)
		}
		return slurm.New(cfg)
	}
	return nil, cli.Usagef("run: --scheduler %q: want slurm or local", f.scheduler)
}

func writeResults(dir string, rep *certify.Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, o := range rep.Results {
		if o.Status == certify.StatusAccepted {
			if err := os.WriteFile(filepath.Join(dir, o.Job+".out"), o.Output, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}
