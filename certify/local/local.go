// Package local runs certify tasks as processes on this machine, each
// attributed to one of a set of simulated hosts, for fast tests,
// demonstrations and simulations with real commands. A host may have a
// wrapper (WRAPPER sh -c COMMAND), which is how a test makes a saboteur.
package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pvc-project/pvc/certify"
)

// Config configures the local executor.
type Config struct {
	// Hosts names the simulated hosts. Required.
	Hosts []string
	// Wrap maps a host to the wrapper its tasks run under (argv before
	// "sh -c COMMAND"); hosts without an entry run the command directly.
	Wrap map[string][]string
	// Parallel is the number of processes run at once; 0 means the number
	// of CPUs.
	Parallel int
	// Timeout bounds one task; 0 means none.
	Timeout time.Duration
	// Rand places tasks; nil means a fixed seed.
	Rand *rand.Rand
}

// Scheduler implements certify.Scheduler with local processes.
type Scheduler struct {
	cfg Config
	mu  sync.Mutex // guards rng
	rng *rand.Rand
}

// HostNames returns n host names local01, local02, ...
func HostNames(n int) []string {
	var hs []string
	for i := range n {
		hs = append(hs, fmt.Sprintf("local%02d", i+1))
	}
	return hs
}

// New returns a local scheduler.
func New(cfg Config) (*Scheduler, error) {
	if len(cfg.Hosts) == 0 {
		return nil, errors.New("local: no hosts")
	}
	seen := map[string]bool{}
	for _, h := range cfg.Hosts {
		if !certify.ValidHostName(h) || seen[h] {
			return nil, fmt.Errorf("local: bad or repeated host name %q", h)
		}
		seen[h] = true
	}
	for h, w := range cfg.Wrap {
		if !seen[h] {
			return nil, fmt.Errorf("local: wrapper for unknown host %q", h)
		}
		if len(w) == 0 {
			return nil, fmt.Errorf("local: empty wrapper for host %q", h)
		}
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = runtime.NumCPU()
	}
	rng := cfg.Rand
	if rng == nil {
		rng = rand.New(rand.NewPCG(3, 4))
	}
	return &Scheduler{cfg: cfg, rng: rng}, nil
}

// Hosts implements certify.Scheduler.
func (s *Scheduler) Hosts(context.Context) ([]string, error) { return slices.Clone(s.cfg.Hosts), nil }

// place picks a host for each task: allowed, not already given to the
// task's group in this call if possible, least loaded in this call, ties
// broken at random.
func (s *Scheduler) place(tasks []certify.Task) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	load := map[string]int{}
	taken := map[string]map[string]bool{}
	out := make([]string, len(tasks))
	for i, t := range tasks {
		ex := map[string]bool{}
		for _, h := range t.Exclude {
			ex[h] = true
		}
		best, nbest := "", 0
		score := func(h string) int {
			sc := load[h]
			if taken[t.Group][h] {
				sc += 1 << 20
			}
			return sc
		}
		for _, h := range s.cfg.Hosts {
			if ex[h] {
				continue
			}
			switch {
			case best == "" || score(h) < score(best):
				best, nbest = h, 1
			case score(h) == score(best):
				nbest++
				if s.rng.IntN(nbest) == 0 {
					best = h
				}
			}
		}
		out[i] = best
		if best != "" {
			load[best]++
			if taken[t.Group] == nil {
				taken[t.Group] = map[string]bool{}
			}
			taken[t.Group][best] = true
		}
	}
	return out
}

// Run implements certify.Scheduler.
func (s *Scheduler) Run(ctx context.Context, tasks []certify.Task) ([]certify.Result, error) {
	hosts := s.place(tasks)
	results := make([]certify.Result, len(tasks))
	sem := make(chan struct{}, s.cfg.Parallel)
	var wg sync.WaitGroup
	for i, t := range tasks {
		if hosts[i] == "" {
			results[i] = certify.Result{Task: t.ID, Err: errors.New("local: every host is excluded")}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				results[i] = certify.Result{Task: t.ID, Host: hosts[i], Err: ctx.Err()}
				return
			}
			defer func() { <-sem }()
			results[i] = s.runOne(ctx, t, hosts[i])
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return results, nil
}

func (s *Scheduler) runOne(ctx context.Context, t certify.Task, host string) certify.Result {
	if s.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.Timeout)
		defer cancel()
	}
	argv := append(slices.Clone(s.cfg.Wrap[host]), "sh", "-c", t.Command)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = t.Dir
	cmd.Env = append(os.Environ(), "PVC_HOST="+host, "PVC_TASK="+t.ID)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := certify.Result{Task: t.ID, Host: host, Output: out.Bytes()}
	if cmd.ProcessState != nil {
		r.CPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		r.Err = fmt.Errorf("task %s on %s: %w: %s", t.ID, host, err, strings.TrimSpace(errb.String()))
		r.Output = nil
	}
	return r
}
