// Package sim is an in-memory pool of simulated hosts, honest or
// saboteurs, that implements certify.Scheduler, and the saboteur
// experiment of the PVC paper's Figure 8 run with the real Certifier on
// top of it.
package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/pvc-project/pvc/certify"
)

// Pool is a set of simulated hosts. A task's command is a job name; an
// honest host returns Correct(name), a saboteur always returns a wrong
// result: its own (non-colluding) or, with Collude, the same wrong result
// as every other saboteur.
type Pool struct {
	hosts   []string
	sab     map[string]bool
	collude bool
	rng     *rand.Rand
	// Executions counts the tasks run so far.
	Executions int
}

// NewPool returns n hosts named h001..., of which saboteurs (chosen with
// rng) always lie.
func NewPool(n, saboteurs int, collude bool, rng *rand.Rand) *Pool {
	p := &Pool{sab: map[string]bool{}, collude: collude, rng: rng}
	for i := range n {
		p.hosts = append(p.hosts, fmt.Sprintf("h%03d", i+1))
	}
	for _, i := range rng.Perm(n)[:saboteurs] {
		p.sab[p.hosts[i]] = true
	}
	return p
}

// Saboteur reports whether host always lies.
func (p *Pool) Saboteur(host string) bool { return p.sab[host] }

// Correct is the correct result of the job named name.
func Correct(name string) []byte { return []byte("ok " + name + "\n") }

// Hosts implements certify.Scheduler.
func (p *Pool) Hosts(context.Context) ([]string, error) { return slices.Clone(p.hosts), nil }

// Run implements certify.Scheduler: each task goes to a random host not
// in its Exclude list, and tasks of one group to distinct hosts while
// there are enough (as a real scheduler places concurrent tasks on idle
// nodes).
func (p *Pool) Run(_ context.Context, tasks []certify.Task) ([]certify.Result, error) {
	taken := map[string]map[string]bool{} // group -> hosts given in this call
	out := make([]certify.Result, len(tasks))
	for i, t := range tasks {
		ex := map[string]bool{}
		for _, h := range t.Exclude {
			ex[h] = true
		}
		var cand, fresh []string
		for _, h := range p.hosts {
			if !ex[h] {
				cand = append(cand, h)
				if !taken[t.Group][h] {
					fresh = append(fresh, h)
				}
			}
		}
		if len(fresh) > 0 {
			cand = fresh
		}
		if len(cand) == 0 {
			out[i] = certify.Result{Task: t.ID, Err: fmt.Errorf("no host allowed")}
			continue
		}
		h := cand[p.rng.IntN(len(cand))]
		if taken[t.Group] == nil {
			taken[t.Group] = map[string]bool{}
		}
		taken[t.Group][h] = true
		p.Executions++
		res := Correct(t.Command)
		if p.sab[h] {
			if p.collude {
				res = []byte("bad " + t.Command + "\n")
			} else {
				res = fmt.Appendf(nil, "bad %s from %s #%d\n", t.Command, h, p.Executions)
			}
		}
		out[i] = certify.Result{Task: t.ID, Host: h, Output: res, CPU: time.Second}
	}
	return out, nil
}
