// Package slurm runs certify tasks as Slurm batch jobs: sbatch with
// --exclude for the hosts a task must avoid, squeue to follow them, and
// result files written by the batch script into a directory that every
// node sees at the same path (a shared file system, or staged output).
package slurm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pvc-project/pvc/certify"
)

// Config configures the Slurm scheduler. The zero value of each field
// means the default in its comment.
type Config struct {
	// WorkDir holds the batch scripts and the tasks' result files; every
	// node must see it at the same path. Required.
	WorkDir string
	// Partition to submit to; "" means the cluster's default partition.
	Partition string
	// Wrapper is a command placed before the task's command in the batch
	// script (a site's job wrapper: WRAPPER sh -c COMMAND); "" means none.
	Wrapper string
	// Env is added to the environment of the Slurm client commands
	// (sbatch, squeue, sinfo, scancel), e.g. SLURM_CONF=/etc/slurm/x.conf.
	Env []string
	// Poll is the interval between squeue calls; 0 means 200 ms.
	Poll time.Duration
	// Timeout bounds one Run; 0 means no bound.
	Timeout time.Duration
	// Keep leaves the scripts and result files in WorkDir (else removed
	// once read).
	Keep bool
}

// Scheduler implements certify.Scheduler with Slurm's client commands.
type Scheduler struct {
	cfg   Config
	hosts map[string]bool
}

// New returns a Slurm scheduler.
func New(cfg Config) (*Scheduler, error) {
	if cfg.WorkDir == "" {
		return nil, errors.New("slurm: a work directory is needed")
	}
	abs, err := filepath.Abs(cfg.WorkDir)
	if err != nil {
		return nil, err
	}
	cfg.WorkDir = abs
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("slurm: work directory: %w", err)
	}
	if cfg.Poll == 0 {
		cfg.Poll = 200 * time.Millisecond
	}
	return &Scheduler{cfg: cfg}, nil
}

func (s *Scheduler) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), s.cfg.Env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Hosts implements certify.Scheduler: the nodes sinfo lists.
func (s *Scheduler) Hosts(ctx context.Context) ([]string, error) {
	args := []string{"-h", "-N", "-o", "%N"}
	if s.cfg.Partition != "" {
		args = append(args, "-p", s.cfg.Partition)
	}
	out, err := s.run(ctx, "sinfo", args...)
	if err != nil {
		return nil, err
	}
	s.hosts = map[string]bool{}
	for _, l := range strings.Fields(out) {
		s.hosts[l] = true
	}
	hs := make([]string, 0, len(s.hosts))
	for h := range s.hosts {
		hs = append(hs, h)
	}
	sort.Strings(hs)
	if len(hs) == 0 {
		return nil, errors.New("slurm: sinfo lists no node")
	}
	return hs, nil
}

// quote quotes s for a POSIX shell.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Script returns the batch script of a task: it runs the command (through
// the wrapper) in the task's directory, its standard output into ID.out
// (renamed into place when complete), standard error into ID.err and the
// CPU time (user and system seconds, from bash's time) into ID.times.
func (s *Scheduler) Script(t certify.Task) string {
	base := filepath.Join(s.cfg.WorkDir, t.ID)
	cmd := "sh -c " + quote(t.Command)
	if s.cfg.Wrapper != "" {
		cmd = s.cfg.Wrapper + " " + cmd
	}
	dir := t.Dir
	if dir == "" {
		dir = s.cfg.WorkDir
	}
	var b strings.Builder
	fmt.Fprintf(&b, "#!/bin/bash\n# pvc-certify task %s\n", t.ID)
	fmt.Fprintf(&b, "cd %s || exit 97\n", quote(dir))
	fmt.Fprintf(&b, "TIMEFORMAT='%%3U %%3S'\n")
	fmt.Fprintf(&b, "{ time %s >%s 2>%s ; } 2>%s\n", cmd, quote(base+".out.tmp"), quote(base+".err"), quote(base+".times"))
	fmt.Fprintf(&b, "rc=$?\n")
	fmt.Fprintf(&b, "[ $rc = 0 ] && mv %s %s\n", quote(base+".out.tmp"), quote(base+".out"))
	fmt.Fprintf(&b, "exit $rc\n")
	return b.String()
}

// job is a submitted task.
type job struct {
	id    string // Slurm job ID
	task  certify.Task
	state string
	node  string
}

// terminal states of squeue.
var terminal = map[string]bool{
	"COMPLETED": true, "FAILED": true, "CANCELLED": true, "TIMEOUT": true, "NODE_FAIL": true,
	"PREEMPTED": true, "BOOT_FAIL": true, "DEADLINE": true, "OUT_OF_MEMORY": true,
}

// Run implements certify.Scheduler.
func (s *Scheduler) Run(ctx context.Context, tasks []certify.Task) ([]certify.Result, error) {
	if s.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.Timeout)
		defer cancel()
	}
	if s.hosts == nil {
		if _, err := s.Hosts(ctx); err != nil {
			return nil, err
		}
	}
	jobs := make([]*job, len(tasks))
	byID := map[string]*job{}
	var submitted []string
	cleanup := func() {
		if len(submitted) == 0 {
			return
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = s.run(cctx, "scancel", submitted...)
	}
	for i, t := range tasks {
		if !certify.ValidJobName(t.ID) {
			return nil, fmt.Errorf("slurm: task ID %q", t.ID)
		}
		script := filepath.Join(s.cfg.WorkDir, t.ID+".sh")
		if err := os.WriteFile(script, []byte(s.Script(t)), 0o755); err != nil {
			return nil, err
		}
		args := []string{"--parsable", "--job-name", "pvc-" + t.ID, "--output", filepath.Join(s.cfg.WorkDir, t.ID+".log"),
			"--chdir", s.cfg.WorkDir, "--ntasks", "1"}
		if s.cfg.Partition != "" {
			args = append(args, "--partition", s.cfg.Partition)
		}
		var ex []string
		for _, h := range t.Exclude {
			if s.hosts[h] {
				ex = append(ex, h)
			}
		}
		if len(ex) > 0 {
			args = append(args, "--exclude", strings.Join(ex, ","))
		}
		out, err := s.run(ctx, "sbatch", append(args, script)...)
		if err != nil {
			cleanup()
			return nil, err
		}
		id, _, _ := strings.Cut(strings.TrimSpace(out), ";")
		if _, err := strconv.ParseUint(id, 10, 64); err != nil {
			cleanup()
			return nil, fmt.Errorf("slurm: sbatch printed %q, not a job ID", out)
		}
		jobs[i] = &job{id: id, task: t}
		byID[id] = jobs[i]
		submitted = append(submitted, id)
	}
	if err := s.wait(ctx, jobs, byID); err != nil {
		cleanup()
		return nil, err
	}
	results := make([]certify.Result, len(tasks))
	for i, j := range jobs {
		results[i] = s.collect(j)
	}
	return results, nil
}

// wait polls squeue until every job is in a terminal state.
func (s *Scheduler) wait(ctx context.Context, jobs []*job, byID map[string]*job) error {
	ids := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i] = j.id
	}
	missing := map[string]int{}
	for {
		out, err := s.run(ctx, "squeue", "-h", "--states=all", "-j", strings.Join(ids, ","), "-o", "%i|%T|%N")
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		seen := map[string]bool{}
		if err == nil {
			for _, l := range strings.Split(out, "\n") {
				f := strings.Split(strings.TrimSpace(l), "|")
				if len(f) != 3 {
					continue
				}
				if j := byID[f[0]]; j != nil {
					j.state, j.node = f[1], f[2]
					seen[f[0]] = true
				}
			}
		}
		done := true
		for _, j := range jobs {
			if !seen[j.id] && err == nil {
				// Aged out of slurmctld's memory (MinJobAge): done.
				missing[j.id]++
				if missing[j.id] >= 3 {
					j.state = "GONE"
				}
			}
			if !terminal[j.state] && j.state != "GONE" {
				done = false
			}
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(s.cfg.Poll):
		}
	}
}

// collect reads a finished job's files.
func (s *Scheduler) collect(j *job) certify.Result {
	base := filepath.Join(s.cfg.WorkDir, j.task.ID)
	r := certify.Result{Task: j.task.ID, Host: j.node}
	defer func() {
		if !s.cfg.Keep {
			for _, ext := range []string{".sh", ".out", ".out.tmp", ".err", ".times", ".log"} {
				os.Remove(base + ext)
			}
		}
	}()
	if t, err := os.ReadFile(base + ".times"); err == nil {
		f := strings.Fields(string(t))
		if len(f) >= 2 {
			u, e1 := strconv.ParseFloat(f[len(f)-2], 64)
			sy, e2 := strconv.ParseFloat(f[len(f)-1], 64)
			if e1 == nil && e2 == nil && u >= 0 && sy >= 0 {
				r.CPU = time.Duration((u + sy) * float64(time.Second))
			}
		}
	}
	if j.state != "COMPLETED" {
		msg, _ := os.ReadFile(base + ".err")
		log, _ := os.ReadFile(base + ".log")
		r.Err = fmt.Errorf("slurm job %s (task %s) on %q: %s: %s", j.id, j.task.ID, j.node, j.state,
			strings.TrimSpace(string(msg)+" "+string(log)))
		return r
	}
	out, err := os.ReadFile(base + ".out")
	if err != nil {
		r.Err = fmt.Errorf("slurm job %s (task %s) on %s: result: %w", j.id, j.task.ID, j.node, err)
		return r
	}
	r.Output = out
	if r.Host == "" {
		r.Err = fmt.Errorf("slurm job %s (task %s): squeue did not say which node ran it", j.id, j.task.ID)
	}
	return r
}
