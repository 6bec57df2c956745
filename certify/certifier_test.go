package certify_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pvc-project/pvc/certify"
	"github.com/pvc-project/pvc/certify/certifytest"
)

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func correct(cmd string) string { return "result of " + cmd + "\n" }

// liars returns an Answer where the named hosts return a wrong result of
// their own and every other host the correct one.
func liars(bad ...string) func(host, cmd string) ([]byte, error) {
	return func(host, cmd string) ([]byte, error) {
		if slices.Contains(bad, host) {
			return []byte("wrong from " + host + "\n"), nil
		}
		return []byte(correct(cmd)), nil
	}
}

func jobs(n int) *certify.JobFile {
	jf := &certify.JobFile{}
	for i := range n {
		name := fmt.Sprintf("j%d", i+1)
		jf.Jobs = append(jf.Jobs, certify.Job{Name: name, Command: "cmd-" + name})
	}
	return jf
}

func run(t *testing.T, p *certifytest.Pool, st *certify.State, cfg certify.Config, jf *certify.JobFile) *certify.Report {
	t.Helper()
	c, err := certify.New(p, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := c.Run(context.Background(), jf)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestVoteAgreementIsAccepted(t *testing.T) {
	p := &certifytest.Pool{Names: []string{"a", "b", "c", "d"}, Answer: liars()}
	st := certify.NewState()
	rep := run(t, p, st, certify.Config{Replicas: 2}, jobs(4))
	if rep.Accepted != 4 || rep.Rerun != 0 || rep.ReplicaTasks != 8 || len(rep.Blacklisted) != 0 {
		t.Fatalf("report %+v: want 4 accepted with 2 tasks each, no re-run, nobody blacklisted", rep)
	}
	for _, o := range rep.Results {
		if string(o.Output) != correct("cmd-"+o.Job) || len(o.Hosts) != 2 || o.Hosts[0] == o.Hosts[1] {
			t.Errorf("%s: output %q on hosts %v", o.Job, o.Output, o.Hosts)
		}
	}
	var credits float64
	for _, h := range st.Names() {
		credits += st.Hosts[h].CPUSeconds
	}
	if math.Abs(credits-8*0.25) > 1e-9 {
		t.Errorf("credits %v CPU s, want 8 tasks × 0.25 s", credits)
	}
	if rep.ReplicasPerAccepted != 2 {
		t.Errorf("replicas per accepted %v, want 2", rep.ReplicasPerAccepted)
	}
}

func TestReVoteOnDisagreementExcludesFirstPhaseHosts(t *testing.T) {
	p := &certifytest.Pool{Names: []string{"a", "b", "c", "d", "e"}, Answer: liars("b")}
	st := certify.NewState()
	rep := run(t, p, st, certify.Config{Replicas: 2, Window: 1}, jobs(1))
	if len(p.Calls) != 2 || len(p.Calls[0]) != 2 || len(p.Calls[1]) != 3 {
		t.Fatalf("calls %v: want m+1 = 2 tasks, then 2m+1 = 3", p.Calls)
	}
	for _, tk := range p.Calls[1] {
		if !slices.Contains(tk.Exclude, "a") || !slices.Contains(tk.Exclude, "b") {
			t.Errorf("re-vote task %s excludes %v, want the first phase's hosts a and b", tk.ID, tk.Exclude)
		}
	}
	o := rep.Results[0]
	if o.Status != certify.StatusAccepted || !o.Rerun || string(o.Output) != correct("cmd-j1") {
		t.Fatalf("outcome %+v: want the majority's correct result after a re-run", o)
	}
	if !slices.Equal(o.Hosts, []string{"a", "c", "d", "e"}) {
		t.Errorf("accepted hosts %v, want a (agreeing in phase 1) and c, d, e", o.Hosts)
	}
	rec := st.Hosts["b"]
	if rec == nil || !rec.Blacklisted || rec.Evidence.Kind != certify.EvidenceVote || rec.Evidence.Job != "j1" ||
		rec.Evidence.Expected != sum([]byte(correct("cmd-j1"))) || rec.Evidence.Got != sum([]byte("wrong from b\n")) {
		t.Fatalf("b's record %+v: want blacklisted with the vote as evidence", rec)
	}
	if st.Hosts["b"].Accepted != 0 || st.Hosts["b"].CPUSeconds != 0 {
		t.Errorf("the loser earned credits: %+v", st.Hosts["b"])
	}
	if rep.Rerun != 1 || rep.ReplicaTasks != 5 {
		t.Errorf("rerun %d, tasks %d; want 1 and 5", rep.Rerun, rep.ReplicaTasks)
	}
}

func TestKeepLosersDoesNotBlacklist(t *testing.T) {
	p := &certifytest.Pool{Names: []string{"a", "b", "c", "d", "e"}, Answer: liars("b")}
	st := certify.NewState()
	rep := run(t, p, st, certify.Config{Replicas: 2, Window: 1, KeepLosers: true}, jobs(1))
	if rep.Accepted != 1 || len(st.Blacklisted()) != 0 {
		t.Fatalf("accepted %d, blacklisted %v: want the job accepted and nobody blacklisted", rep.Accepted, st.Blacklisted())
	}
}

func TestNoMajority(t *testing.T) {
	// Every host returns a result of its own: no two agree.
	p := &certifytest.Pool{Names: []string{"a", "b", "c", "d", "e"}, Answer: liars("a", "b", "c", "d", "e")}
	st := certify.NewState()
	rep := run(t, p, st, certify.Config{Replicas: 2, Window: 1}, jobs(1))
	o := rep.Results[0]
	if o.Status != certify.StatusNoMajority || rep.NoMajority != 1 || rep.Accepted != 0 {
		t.Fatalf("outcome %+v: want no-majority", o)
	}
	if !strings.Contains(o.Reason, "no majority") || !strings.Contains(o.Reason, "[1 1 1]") {
		t.Errorf("reason %q: want it to say that no majority exists and how the votes split", o.Reason)
	}
	if len(st.Blacklisted()) != 0 {
		t.Errorf("blacklisted %v without a decided vote", st.Blacklisted())
	}
	var b strings.Builder
	if err := rep.WriteText(&b); err != nil || !strings.Contains(b.String(), "j1: no-majority") {
		t.Errorf("text report %q does not name the job without majority", b.String())
	}
}

func TestReVoteNeedsEnoughHosts(t *testing.T) {
	p := &certifytest.Pool{Names: []string{"a", "b", "c"}, Answer: liars("b")}
	rep := run(t, p, certify.NewState(), certify.Config{Replicas: 2, Window: 1}, jobs(1))
	o := rep.Results[0]
	if o.Status != certify.StatusFailed || !strings.Contains(o.Reason, "not enough hosts") {
		t.Fatalf("outcome %+v: want failed for lack of hosts (3 needed besides a and b, 1 left)", o)
	}
}

func TestSpotCheckBlacklistsAndExcludes(t *testing.T) {
	const checkCmd = "cmd-known"
	given := map[string]map[string]bool{}
	p := &certifytest.Pool{Names: []string{"a", "b", "c", "d"}, Answer: liars("b")}
	// The check goes to b whenever b may run it; jobs avoid b, so that
	// only the spot-check can catch it.
	p.Place = func(tk certify.Task, allowed []string) string {
		if tk.Command == checkCmd && slices.Contains(allowed, "b") {
			return "b"
		}
		if given[tk.Group] == nil {
			given[tk.Group] = map[string]bool{}
		}
		for _, h := range allowed {
			if h != "b" && !given[tk.Group][h] {
				given[tk.Group][h] = true
				return h
			}
		}
		return ""
	}
	jf := jobs(6)
	jf.Checks = []certify.Job{{Name: "known", Command: checkCmd, Expect: []byte(correct(checkCmd))}}
	st := certify.NewState()
	rep := run(t, p, st, certify.Config{Replicas: 2, SpotEvery: 2, Window: 1, KeepLosers: true}, jf)
	rec := st.Hosts["b"]
	if rec == nil || !rec.Blacklisted || rec.ChecksFailed != 1 || rec.Evidence.Kind != certify.EvidenceSpotCheck ||
		rec.Evidence.Job != "known" || rec.Evidence.Expected != sum([]byte(correct(checkCmd))) ||
		rec.Evidence.Excerpt != "wrong from b\n" {
		t.Fatalf("b: %+v: want blacklisted by the failed spot-check, with the evidence", rec)
	}
	if rep.Checks < 2 || rep.ChecksFailed != 1 || rep.Accepted != 6 {
		t.Errorf("report: %d checks, %d failed, %d accepted; want ≥2, 1, 6", rep.Checks, rep.ChecksFailed, rep.Accepted)
	}
	passed := 0
	for _, h := range []string{"a", "c", "d"} {
		if r := st.Hosts[h]; r != nil {
			passed += r.ChecksPassed
		}
	}
	if passed == 0 {
		t.Errorf("no honest host passed a spot-check")
	}
	// After b failed, no task may go to it, and every task excludes it.
	first := slices.Index(p.Events, "b:"+checkCmd)
	if first < 0 {
		t.Fatal("the check never ran on b")
	}
	if slices.Contains(p.RanOn[first+1:], "b") {
		t.Errorf("tasks ran on b after it was blacklisted: %v", p.Events[first+1:])
	}
	n := 0
	for _, call := range p.Calls {
		for _, tk := range call {
			n++
			if n > first+1 && !slices.Contains(tk.Exclude, "b") {
				t.Errorf("task %s (%s) does not exclude blacklisted b: %v", tk.ID, tk.Command, tk.Exclude)
			}
		}
	}
}

func TestPersistedBlacklistIsExcluded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	st := certify.NewState()
	st.Host("b").Blacklisted = true
	st.Host("b").Evidence = &certify.Evidence{Kind: certify.EvidenceSpotCheck, Job: "x"}
	if err := st.Save(path); err != nil {
		t.Fatal(err)
	}
	st2, err := certify.LoadState(path)
	if err != nil {
		t.Fatal(err)
	}
	p := &certifytest.Pool{Names: []string{"a", "b", "c", "d"}, Answer: liars()}
	saves := 0
	cfg := certify.Config{Replicas: 2, Persist: func(s *certify.State) error { saves++; return s.Save(path) }}
	rep := run(t, p, st2, cfg, jobs(5))
	if slices.Contains(p.RanOn, "b") || rep.Accepted != 5 {
		t.Fatalf("ran on %v (accepted %d): the blacklisted host b got work", p.RanOn, rep.Accepted)
	}
	for _, call := range p.Calls {
		for _, tk := range call {
			if !slices.Contains(tk.Exclude, "b") {
				t.Errorf("task %s does not exclude b", tk.ID)
			}
		}
	}
	st3, err := certify.LoadState(path)
	if err != nil || saves == 0 {
		t.Fatalf("reload after run: %v (saves %d)", err, saves)
	}
	if !st3.Hosts["b"].Blacklisted || st3.Hosts["a"].Accepted == 0 {
		t.Errorf("persisted state lost the blacklist or the credits: %+v %+v", st3.Hosts["b"], st3.Hosts["a"])
	}
}

func TestTaskFailuresAreRetriedElsewhere(t *testing.T) {
	p := &certifytest.Pool{Names: []string{"a", "b", "c"}, Answer: func(host, cmd string) ([]byte, error) {
		if host == "b" {
			return nil, fmt.Errorf("node failure")
		}
		return []byte(correct(cmd)), nil
	}}
	rep := run(t, p, certify.NewState(), certify.Config{Replicas: 2, Window: 1}, jobs(1))
	if rep.Accepted != 1 || rep.TaskFailures != 1 || !slices.Equal(rep.Results[0].Hosts, []string{"a", "c"}) {
		t.Fatalf("report %+v: want the job accepted on a and c after b failed once", rep)
	}
	p2 := &certifytest.Pool{Names: []string{"a", "b", "c", "d", "e"}, Answer: func(string, string) ([]byte, error) { return nil, fmt.Errorf("broken") }}
	rep = run(t, p2, certify.NewState(), certify.Config{Replicas: 2, Window: 1}, jobs(1))
	if rep.Failed != 1 || !strings.Contains(rep.Results[0].Reason, "tasks failed") {
		t.Fatalf("report %+v: want the job failed after repeated task failures", rep.Results)
	}
}

// tolerance is a comparison command: two files holding "x=NUMBER" are
// equal when the numbers differ by less than 1e-3.
const tolerance = `#!/bin/sh
a=$(cut -d= -f2 "$1"); b=$(cut -d= -f2 "$2")
[ -n "$a" ] && [ -n "$b" ] || exit 3
awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit (d < 1e-3) ? 0 : 1 }'
`

func TestComparatorPlugIn(t *testing.T) {
	script := filepath.Join(t.TempDir(), "close-enough")
	if err := os.WriteFile(script, []byte(tolerance), 0o755); err != nil {
		t.Fatal(err)
	}
	// Hosts compute the same value with different rounding.
	answer := func(host, _ string) ([]byte, error) {
		return fmt.Appendf(nil, "x=1.0000%d\n", len(host)+int(host[0]-'a')), nil
	}
	names := []string{"a", "b", "c", "d", "e"}
	p := &certifytest.Pool{Names: names, Answer: answer}
	rep := run(t, p, certify.NewState(), certify.Config{Replicas: 2, Window: 1}, jobs(1))
	if rep.Rerun != 1 || rep.NoMajority != 1 {
		t.Fatalf("byte equality: %+v: want a re-run that finds no majority (every host's bytes differ)", rep.Results)
	}
	cc, err := certify.ParseCommandComparator("sh " + script)
	if err != nil {
		t.Fatal(err)
	}
	p = &certifytest.Pool{Names: names, Answer: answer}
	rep = run(t, p, certify.NewState(), certify.Config{Replicas: 2, Window: 1, Comparator: cc}, jobs(1))
	if rep.Accepted != 1 || rep.Rerun != 0 {
		t.Fatalf("tolerance command: %+v: want accepted at once", rep.Results)
	}
	// A wrong value beyond the tolerance is still a disagreement.
	p = &certifytest.Pool{Names: names, Answer: func(host, cmd string) ([]byte, error) {
		if host == "a" {
			return []byte("x=1.5\n"), nil
		}
		return answer(host, cmd)
	}}
	st := certify.NewState()
	rep = run(t, p, st, certify.Config{Replicas: 2, Window: 1, Comparator: cc}, jobs(1))
	if rep.Accepted != 1 || rep.Rerun != 1 || !st.Hosts["a"].Blacklisted {
		t.Fatalf("tolerance command, a off by 0.5: %+v: want a re-run and a blacklisted", rep.Results)
	}
	// A comparator that fails (exit 3) ends the run with an error.
	p = &certifytest.Pool{Names: names, Answer: func(string, string) ([]byte, error) { return []byte("x=\n"), nil }}
	c, _ := certify.New(p, certify.NewState(), certify.Config{Replicas: 2, Window: 1, Comparator: cc})
	if _, err := c.Run(context.Background(), jobs(1)); err == nil || !strings.Contains(err.Error(), "compare command") {
		t.Fatalf("err %v: want the comparator's failure", err)
	}
}

func TestCredibilityTrustedHostsNeedFewerReplicas(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e", "f"}
	cfg := certify.Config{Policy: certify.PolicyCredibility, TargetError: 0.01, Window: 1}
	// Fresh hosts have credibility 1-f = 0.9: two agreeing give 0.9878,
	// three 0.9986, so three replicas are needed for 1-ε = 0.99.
	p := &certifytest.Pool{Names: names, Answer: liars()}
	rep := run(t, p, certify.NewState(), cfg, jobs(2))
	for _, o := range rep.Results {
		if o.Status != certify.StatusAccepted || o.Replicas != 3 || o.Credibility < 0.99 {
			t.Errorf("fresh hosts: %+v: want accepted with 3 replicas", o)
		}
	}
	// A host that passed 50 spot-checks (credibility 0.9992) is trusted
	// alone.
	st := certify.NewState()
	for _, h := range names {
		st.Host(h).ChecksPassed = 50
	}
	p = &certifytest.Pool{Names: names, Answer: liars()}
	rep = run(t, p, st, cfg, jobs(4))
	if rep.Accepted != 4 || rep.ReplicasPerAccepted != 1 {
		t.Fatalf("trusted hosts: %+v: want 4 accepted with 1 replica each", rep)
	}
	// A saboteur's result never reaches the target alone (it never passes
	// a check) and is outvoted.
	st = certify.NewState()
	for _, h := range names {
		st.Host(h).ChecksPassed = 3
	}
	st.Host("a").ChecksPassed = 0
	p = &certifytest.Pool{Names: names, Answer: liars("a")}
	rep = run(t, p, st, cfg, jobs(3))
	for _, o := range rep.Results {
		if o.Status != certify.StatusAccepted || string(o.Output) != correct("cmd-"+o.Job) {
			t.Errorf("%+v: want the correct result accepted", o)
		}
	}
	if !st.Hosts["a"].Blacklisted {
		t.Errorf("the saboteur a was not blacklisted after losing")
	}
}

func TestCredibilityFormulas(t *testing.T) {
	near := func(got, want float64) bool { return math.Abs(got-want) < 1e-4 }
	if got := certify.HostCredibility(0.1, 0); !near(got, 0.9) {
		t.Errorf("CrP(f=0.1, k=0) = %v, want 0.9", got)
	}
	if got := certify.HostCredibility(0.1, 1); !near(got, 1-0.1/(0.9*math.E)) {
		t.Errorf("CrP(f=0.1, k=1) = %v", got)
	}
	if a, b := certify.HostCredibility(0.1, 10), certify.HostCredibility(0.1, 100); !(a < b && b < 1) {
		t.Errorf("credibility does not grow with passed checks: %v %v", a, b)
	}
	if got := certify.GroupCredibility([][]float64{{0.9, 0.9}}); !near(got[0], 0.81/0.82) {
		t.Errorf("two agreeing 0.9 hosts: %v, want 0.9878", got)
	}
	got := certify.GroupCredibility([][]float64{{0.9}, {0.9}})
	if !near(got[0], 0.09/0.19) || !near(got[1], got[0]) {
		t.Errorf("two disagreeing 0.9 hosts: %v, want 0.4737 each", got)
	}
	got = certify.GroupCredibility([][]float64{{0.9, 0.9}, {0.9}})
	if !near(got[0], 0.081/0.091) || !near(got[1], 0.009/0.091) {
		t.Errorf("2 against 1: %v: want 0.8901 and 0.0989", got)
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []certify.Config{
		{Policy: "majority"}, {Replicas: -1}, {Replicas: 51}, {SpotEvery: -1}, {SpotEvery: 1},
		{TargetError: 1}, {TargetError: -0.1}, {SaboteurBound: 1}, {MaxReplicas: -1}, {Window: -1}, {MaxFailures: -2},
	}
	for _, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: want an error", c)
		}
		if _, err := certify.New(&certifytest.Pool{}, nil, c); err == nil {
			t.Errorf("New(%+v): want an error", c)
		}
	}
	if err := (certify.Config{}).Validate(); err != nil {
		t.Errorf("zero config: %v", err)
	}
}

func TestSchedulerIgnoringExclusionsEndsTheJob(t *testing.T) {
	// A scheduler that always answers from the same host: after the first
	// result every further one is a duplicate and is discarded.
	p := &certifytest.Pool{Names: []string{"a", "b", "c"}, Answer: liars()}
	c, err := certify.New(stuck{p}, certify.NewState(), certify.Config{Replicas: 2, Window: 1})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := c.Run(context.Background(), jobs(1))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 1 || !strings.Contains(rep.Results[0].Reason, "without enough usable results") || rep.Discarded == 0 {
		t.Fatalf("report %+v %+v: want the job failed after discarded duplicates", rep, rep.Results)
	}
}

// stuck runs every task on host "a", whatever it was told to exclude.
type stuck struct{ *certifytest.Pool }

func (s stuck) Run(_ context.Context, tasks []certify.Task) ([]certify.Result, error) {
	out := make([]certify.Result, len(tasks))
	for i, tk := range tasks {
		out[i] = certify.Result{Task: tk.ID, Host: "a", Output: []byte(correct(tk.Command))}
	}
	return out, nil
}
