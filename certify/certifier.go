package certify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Policy is how a result is accepted.
type Policy string

// The policies.
const (
	// PolicyVote: m+1 replicas; on disagreement 2m+1 more on other hosts,
	// whose majority (at least m+1 of them) is accepted.
	PolicyVote Policy = "vote"
	// PolicyCredibility: replicas until one group's credibility reaches
	// 1-TargetError (Sarmenta 2002).
	PolicyCredibility Policy = "credibility"
)

// ParsePolicy parses a policy name.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case PolicyVote, PolicyCredibility:
		return p, nil
	}
	return "", fmt.Errorf("unknown policy %q (want vote or credibility)", s)
}

// Config tunes a Certifier. The zero value of each field means the
// default named in its comment.
type Config struct {
	Policy   Policy // "" means PolicyVote
	Replicas int    // m+1, replicas of the first phase of a vote; 0 means 2
	// SpotEvery is k: one job slot in k is a spot-check. 0 means none.
	SpotEvery int
	// TargetError is ε for PolicyCredibility: a result is accepted when its
	// credibility reaches 1-ε. 0 means 0.01.
	TargetError float64
	// SaboteurBound is f, the assumed upper bound of the fraction of
	// saboteurs, for the credibility formulas. 0 means 0.1.
	SaboteurBound float64
	// MaxReplicas bounds the replicas of one job under PolicyCredibility;
	// 0 means 3×Replicas.
	MaxReplicas int
	// Window is the number of job slots submitted together (one scheduler
	// round). 0 means as many as the pool's usable hosts can run at once
	// (hosts / Replicas, at least 1).
	Window int
	// KeepLosers, if true, does not blacklist the hosts whose results lost
	// a decided vote (by default they are blacklisted, with the vote as
	// evidence, like a failed spot-check).
	KeepLosers bool
	// MaxFailures is how many failed tasks (no result) one job may have
	// before it is reported as failed. 0 means 3.
	MaxFailures int
	Comparator  Comparator // nil means ByteEqual
	Rand        *rand.Rand // picks spot-check jobs; nil means a fixed seed
	TaskPrefix  string     // prefix of task IDs (unique per run for Slurm files); "" means "t"
	Now         func() time.Time
	// Progress, if set, is called after every scheduler round.
	Progress func(Progress)
	// OnBlacklist, if set, is called when a host is blacklisted.
	OnBlacklist func(host string, ev Evidence)
	// Persist, if set, is called with the state after every round that
	// changed it; its error ends the run.
	Persist func(*State) error
	// Stop, if set, is asked before every window; true ends the run early.
	Stop func() bool
}

func (c *Config) defaults() {
	if c.Policy == "" {
		c.Policy = PolicyVote
	}
	if c.Replicas == 0 {
		c.Replicas = 2
	}
	if c.TargetError == 0 {
		c.TargetError = 0.01
	}
	if c.SaboteurBound == 0 {
		c.SaboteurBound = 0.1
	}
	if c.MaxReplicas == 0 {
		c.MaxReplicas = 3 * c.Replicas
	}
	if c.MaxFailures == 0 {
		c.MaxFailures = 3
	}
	if c.Comparator == nil {
		c.Comparator = ByteEqual{}
	}
	if c.Rand == nil {
		c.Rand = rand.New(rand.NewPCG(1, 2))
	}
	if c.TaskPrefix == "" {
		c.TaskPrefix = "t"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate checks the configuration's ranges.
func (c Config) Validate() error {
	switch {
	case c.Policy != "" && c.Policy != PolicyVote && c.Policy != PolicyCredibility:
		return fmt.Errorf("policy %q: want vote or credibility", c.Policy)
	case c.Replicas < 0 || c.Replicas > 50:
		return fmt.Errorf("replicas %d: want 1 to 50", c.Replicas)
	case c.SpotEvery < 0:
		return fmt.Errorf("spot-every %d: want 0 (none) or more", c.SpotEvery)
	case c.SpotEvery == 1:
		return errors.New("spot-every 1: every slot would be a check, no job would run (want 0 or at least 2)")
	case c.TargetError < 0 || c.TargetError >= 1:
		return fmt.Errorf("target error %v: want a fraction between 0 and 1", c.TargetError)
	case c.SaboteurBound < 0 || c.SaboteurBound >= 1:
		return fmt.Errorf("saboteur bound %v: want a fraction between 0 and 1", c.SaboteurBound)
	case c.MaxReplicas < 0 || c.MaxReplicas > 200:
		return fmt.Errorf("max replicas %d: want 1 to 200", c.MaxReplicas)
	case c.Window < 0:
		return fmt.Errorf("window %d: want 0 (automatic) or more", c.Window)
	case c.MaxFailures < 0:
		return fmt.Errorf("max failures %d: want 0 (default) or more", c.MaxFailures)
	}
	return nil
}

// Progress is the run's state after a scheduler round.
type Progress struct {
	Jobs, Done, Accepted, Rerun, NoMajority, Failed int
	Checks, Blacklisted, Executions                 int
}

func (p Progress) String() string {
	return fmt.Sprintf("jobs %d/%d done, %d accepted, %d re-run, %d without majority, %d failed; %d spot-checks; %d hosts blacklisted; %d tasks run",
		p.Done, p.Jobs, p.Accepted, p.Rerun, p.NoMajority, p.Failed, p.Checks, p.Blacklisted, p.Executions)
}

// Certifier runs jobs through a Scheduler and certifies their results.
type Certifier struct {
	cfg   Config
	sched Scheduler
	state *State

	hosts    []string
	nextTask int
	slot     int
	accepted map[string]*work // accepted jobs, the spot-check pool when the job file has none
	rep      *Report
	dirty    bool
}

// New returns a Certifier that submits through s and records what it
// learns about hosts in st (which it modifies).
func New(s Scheduler, st *State, cfg Config) (*Certifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	if st == nil {
		st = NewState()
	}
	return &Certifier{cfg: cfg, sched: s, state: st, accepted: map[string]*work{}}, nil
}

// State returns the state the certifier updates.
func (c *Certifier) State() *State { return c.state }

// replica is one result of a job.
type replica struct {
	task  string
	host  string
	out   []byte
	cpu   time.Duration
	phase int
}

// work is one job slot in flight: a job to certify or a spot-check.
type work struct {
	job     Job
	slot    int
	check   bool
	expect  []byte
	phase   int // vote: 1 or 2
	want    int // credibility: replicas wanted
	results []replica
	used    map[string]bool // hosts that ran (or failed) a task of this job
	fails   int
	tasks   int
	done    bool
	out     JobOutcome
}

func newWork(j Job) *work {
	return &work{job: j, phase: 1, want: 1, used: map[string]bool{}}
}

// Run certifies the jobs of jf and returns the report. Its error is a
// failure of the scheduler, the comparator or Persist, or ctx's; the
// jobs' own outcomes are in the report.
func (c *Certifier) Run(ctx context.Context, jf *JobFile) (*Report, error) {
	start := c.cfg.Now()
	c.rep = &Report{
		Policy: c.cfg.Policy, Replicas: c.cfg.Replicas, SpotEvery: c.cfg.SpotEvery,
		Jobs: len(jf.Jobs),
	}
	if c.cfg.Policy == PolicyCredibility {
		c.rep.TargetError = c.cfg.TargetError
	}
	hosts, err := c.sched.Hosts(ctx)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	c.hosts = hosts
	queue := jf.Jobs
	var err2 error
	for len(queue) > 0 {
		if c.cfg.Stop != nil && c.cfg.Stop() {
			break
		}
		var wave []*work
		for n := c.window(); len(wave) < n && len(queue) > 0; {
			c.slot++
			if c.cfg.SpotEvery > 0 && c.slot%c.cfg.SpotEvery == 0 {
				if w := c.pickCheck(jf.Checks); w != nil {
					w.slot = c.slot
					wave = append(wave, w)
					continue
				}
			}
			w := newWork(queue[0])
			w.slot = c.slot
			wave = append(wave, w)
			queue = queue[1:]
		}
		if err2 = c.runWave(ctx, wave); err2 != nil {
			break
		}
	}
	c.rep.finish(c.cfg.Now().Sub(start))
	return c.rep, err2
}

func (c *Certifier) window() int {
	if c.cfg.Window > 0 {
		return c.cfg.Window
	}
	usable := 0
	for _, h := range c.hosts {
		if r := c.state.Hosts[h]; r == nil || !r.Blacklisted {
			usable++
		}
	}
	return max(1, usable/c.cfg.Replicas)
}

// pickCheck returns a spot-check: one of the job file's checks, else a job
// accepted earlier in this run (its accepted result is the known answer),
// chosen at random; nil if there is none.
func (c *Certifier) pickCheck(checks []Job) *work {
	var w *work
	if len(checks) > 0 {
		j := checks[c.cfg.Rand.IntN(len(checks))]
		w = newWork(j)
		w.expect = j.Expect
	} else if len(c.accepted) > 0 {
		names := make([]string, 0, len(c.accepted))
		for n := range c.accepted {
			names = append(names, n)
		}
		sortStrings(names)
		a := c.accepted[names[c.cfg.Rand.IntN(len(names))]]
		w = newWork(a.job)
		w.expect = a.out.Output
	} else {
		return nil
	}
	w.check = true
	return w
}

func (c *Certifier) blacklisted(h string) bool {
	r := c.state.Hosts[h]
	return r != nil && r.Blacklisted
}

// exclusion is the hosts a new task of w must avoid: the blacklist and the
// hosts that already ran one of w's tasks.
func (c *Certifier) exclusion(w *work) []string {
	var ex []string
	for _, h := range c.state.Blacklisted() {
		if !w.used[h] {
			ex = append(ex, h)
		}
	}
	for h := range w.used {
		ex = append(ex, h)
	}
	sortStrings(ex)
	return ex
}

// expectedCredibility is the mean credibility of the hosts that may run
// w's next task: what the credibility policy expects of a new replica.
func (c *Certifier) expectedCredibility(w *work) float64 {
	sum, n := 0.0, 0
	for _, h := range c.hosts {
		if w.used[h] || c.blacklisted(h) {
			continue
		}
		passed := 0
		if r := c.state.Hosts[h]; r != nil {
			passed = r.ChecksPassed
		}
		sum += HostCredibility(c.cfg.SaboteurBound, passed)
		n++
	}
	if n == 0 {
		return 1 - c.cfg.SaboteurBound
	}
	return sum / float64(n)
}

// need returns how many more results w wants.
func (c *Certifier) need(w *work) int {
	valid := c.valid(w, 0)
	switch {
	case w.check:
		return 1 - len(valid)
	case c.cfg.Policy == PolicyCredibility:
		return w.want - len(valid)
	case w.phase == 1:
		return c.cfg.Replicas - len(valid)
	default:
		return 2*(c.cfg.Replicas-1) + 1 - len(c.valid(w, 2))
	}
}

// valid returns w's results from hosts not blacklisted (of one phase, or
// all for phase 0).
func (c *Certifier) valid(w *work, phase int) []replica {
	var out []replica
	for _, r := range w.results {
		if (phase == 0 || r.phase == phase) && !c.blacklisted(r.host) {
			out = append(out, r)
		}
	}
	return out
}

func (c *Certifier) runWave(ctx context.Context, wave []*work) error {
	for {
		var tasks []Task
		var owners []*work
		for _, w := range wave {
			if w.done {
				continue
			}
			n := c.need(w)
			if n <= 0 { // cannot happen after evaluate; be safe
				n = 1
			}
			ex := c.exclusion(w)
			avail := len(c.hosts) - countIn(c.hosts, ex)
			if avail < n {
				if avail == 0 || c.cfg.Policy == PolicyVote || w.check {
					c.finish(w, StatusFailed, fmt.Sprintf("not enough hosts: %d more needed, %d not excluded", n, avail))
					continue
				}
				n = avail
			}
			for range n {
				c.nextTask++
				tasks = append(tasks, Task{
					ID: fmt.Sprintf("%s%06d", c.cfg.TaskPrefix, c.nextTask), Command: w.job.Command, Dir: w.job.Dir,
					Exclude: ex, Group: fmt.Sprintf("s%d", w.slot),
				})
				owners = append(owners, w)
			}
		}
		if len(tasks) == 0 {
			return nil
		}
		results, err := c.sched.Run(ctx, tasks)
		if err != nil {
			return fmt.Errorf("scheduler: %w", err)
		}
		if len(results) != len(tasks) {
			return fmt.Errorf("scheduler: %d results for %d tasks", len(results), len(tasks))
		}
		for i, r := range results {
			w := owners[i]
			w.tasks++
			c.rep.Executions++
			if !w.check {
				c.rep.ReplicaTasks++
			}
			switch {
			case r.Err != nil:
				w.fails++
				if r.Host != "" {
					w.used[r.Host] = true
				}
				c.rep.TaskFailures++
			case w.used[r.Host] || c.blacklisted(r.Host):
				c.rep.Discarded++ // a second replica on one host, or a host blacklisted meanwhile
			default:
				w.used[r.Host] = true
				w.results = append(w.results, replica{task: r.Task, host: r.Host, out: r.Output, cpu: r.CPU, phase: w.phase})
			}
		}
		// Spot-checks first, so that a saboteur caught in this round no
		// longer counts in this round's votes.
		for _, pass := range []bool{true, false} {
			for _, w := range wave {
				if !w.done && w.check == pass {
					if err := c.evaluate(ctx, w); err != nil {
						return err
					}
				}
			}
		}
		if c.dirty && c.cfg.Persist != nil {
			if err := c.cfg.Persist(c.state); err != nil {
				return fmt.Errorf("save state: %w", err)
			}
			c.dirty = false
		}
		if c.cfg.Progress != nil {
			c.cfg.Progress(c.rep.progress())
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

func (c *Certifier) evaluate(ctx context.Context, w *work) error {
	if w.fails >= c.cfg.MaxFailures {
		c.finish(w, StatusFailed, fmt.Sprintf("%d tasks failed", w.fails))
		return nil
	}
	if limit := 2*(3*c.cfg.Replicas+c.cfg.MaxReplicas) + c.cfg.MaxFailures; w.tasks > limit {
		// The scheduler keeps placing tasks where their results cannot count.
		c.finish(w, StatusFailed, fmt.Sprintf("%d tasks submitted without enough usable results (hosts already used or blacklisted)", w.tasks))
		return nil
	}
	valid := c.valid(w, 0)
	switch {
	case w.check:
		if len(valid) == 0 {
			return nil
		}
		r := valid[0]
		eq, err := c.cfg.Comparator.Equal(ctx, r.out, w.expect)
		if err != nil {
			return err
		}
		c.rep.Checks++
		rec := c.state.Host(r.host)
		if eq {
			rec.ChecksPassed++
		} else {
			rec.ChecksFailed++
			c.rep.ChecksFailed++
			c.blacklist(r, w, EvidenceSpotCheck, w.expect)
		}
		c.dirty = true
		w.done = true
		return nil

	case c.cfg.Policy == PolicyCredibility:
		groups, err := c.group(ctx, valid)
		if err != nil {
			return err
		}
		creds := make([][]float64, len(groups))
		for i, g := range groups {
			for _, r := range g {
				creds[i] = append(creds[i], HostCredibility(c.cfg.SaboteurBound, c.state.Host(r.host).ChecksPassed))
			}
		}
		cr := GroupCredibility(creds)
		best := 0
		for i := range cr {
			if cr[i] > cr[best] {
				best = i
			}
		}
		target := 1 - c.cfg.TargetError
		switch {
		case len(groups) > 0 && cr[best] >= target:
			w.out.Credibility = cr[best]
			c.accept(w, groups[best], valid)
		case len(valid) >= c.cfg.MaxReplicas:
			b := 0.0
			if len(cr) > 0 {
				b = cr[best]
			}
			c.finish(w, StatusNoMajority, fmt.Sprintf("no result reached credibility %.6g after %d replicas (best %.6g in %d groups)", target, len(valid), b, len(groups)))
		default:
			if len(valid) > 0 && w.want <= len(valid) {
				w.out.Rerun = true
			}
			w.want = len(valid) + replicasNeeded(creds, best, c.expectedCredibility(w), target, c.cfg.MaxReplicas-len(valid))
		}
		return nil
	}

	// PolicyVote.
	m := c.cfg.Replicas - 1
	if w.phase == 1 {
		p1 := c.valid(w, 1)
		if len(p1) < c.cfg.Replicas {
			return nil
		}
		groups, err := c.group(ctx, p1)
		if err != nil {
			return err
		}
		if len(groups) == 1 {
			c.accept(w, groups[0], valid)
			return nil
		}
		w.phase = 2 // disagreement: 2m+1 replicas on other hosts
		w.out.Rerun = true
		return nil
	}
	p2 := c.valid(w, 2)
	if len(p2) < 2*m+1 {
		return nil
	}
	groups, err := c.group(ctx, p2)
	if err != nil {
		return err
	}
	best := 0
	for i := range groups {
		if len(groups[i]) > len(groups[best]) {
			best = i
		}
	}
	if len(groups[best]) >= m+1 {
		// Phase-1 results equal to the majority are part of it.
		all, err := c.group(ctx, valid)
		if err != nil {
			return err
		}
		for _, g := range all {
			if g[0].task == groups[best][0].task || containsTask(g, groups[best][0].task) {
				c.accept(w, g, valid)
				return nil
			}
		}
		c.accept(w, groups[best], valid)
		return nil
	}
	sizes := make([]int, len(groups))
	for i := range groups {
		sizes[i] = len(groups[i])
	}
	c.finish(w, StatusNoMajority, fmt.Sprintf("no majority: the %d re-run replicas split into groups of %v (a majority needs %d)", len(p2), sizes, m+1))
	return nil
}

func containsTask(g []replica, task string) bool {
	for _, r := range g {
		if r.task == task {
			return true
		}
	}
	return false
}

// group partitions results into groups of equal results (each compared
// with its group's first member).
func (c *Certifier) group(ctx context.Context, rs []replica) ([][]replica, error) {
	var groups [][]replica
next:
	for _, r := range rs {
		for i, g := range groups {
			eq, err := c.cfg.Comparator.Equal(ctx, g[0].out, r.out)
			if err != nil {
				return nil, err
			}
			if eq {
				groups[i] = append(groups[i], r)
				continue next
			}
		}
		groups = append(groups, []replica{r})
	}
	return groups, nil
}

// accept accepts group g as w's result: its hosts earn credits, and
// (unless KeepLosers) the hosts of the other valid results are blacklisted.
func (c *Certifier) accept(w *work, g []replica, valid []replica) {
	w.out.Output = g[0].out
	for _, r := range g {
		w.out.Hosts = append(w.out.Hosts, r.host)
		rec := c.state.Host(r.host)
		rec.Accepted++
		rec.CPUSeconds += r.cpu.Seconds()
	}
	c.dirty = true
	if !c.cfg.KeepLosers {
		for _, r := range valid {
			if !containsTask(g, r.task) {
				c.blacklist(r, w, EvidenceVote, g[0].out)
			}
		}
	}
	c.finish(w, StatusAccepted, "")
	c.accepted[w.job.Name] = w
}

func (c *Certifier) blacklist(r replica, w *work, kind string, expected []byte) {
	rec := c.state.Host(r.host)
	if rec.Blacklisted {
		return
	}
	ex := r.out
	if len(ex) > 200 {
		ex = ex[:200]
	}
	ev := Evidence{
		Time: c.cfg.Now().UTC(), Kind: kind, Job: w.job.Name, Task: r.task,
		Expected: digest(expected), Got: digest(r.out), Excerpt: string(ex),
	}
	rec.Blacklisted, rec.Evidence = true, &ev
	c.dirty = true
	c.rep.Blacklisted = append(c.rep.Blacklisted, r.host)
	if c.cfg.OnBlacklist != nil {
		c.cfg.OnBlacklist(r.host, ev)
	}
}

func (c *Certifier) finish(w *work, st Status, reason string) {
	w.done = true
	if w.check {
		return
	}
	w.out.Job = w.job.Name
	w.out.Status = st
	w.out.Reason = reason
	w.out.Tasks = w.tasks
	w.out.Replicas = len(w.results)
	if st == StatusAccepted {
		w.out.SHA256 = digest(w.out.Output)
	}
	c.rep.add(w.out)
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func countIn(hosts, set []string) int {
	m := make(map[string]bool, len(set))
	for _, s := range set {
		m[s] = true
	}
	n := 0
	for _, h := range hosts {
		if m[h] {
			n++
		}
	}
	return n
}
