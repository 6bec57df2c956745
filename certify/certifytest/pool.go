// Package certifytest is a scripted certify.Scheduler for tests: hosts
// whose answers a function decides, placed deterministically, with every
// call recorded.
package certifytest

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/pvc-project/pvc/certify"
)

// Pool runs tasks on named hosts. Placement is deterministic: each task
// goes to the first allowed host (in Names order, starting after the host
// the previous task got) that its group has not used in this call.
type Pool struct {
	Names []string
	// Answer returns host's result for command, or an error for a task
	// that produced none.
	Answer func(host, command string) ([]byte, error)
	// Place, if set, overrides placement: it returns the host for a task
	// given the allowed hosts in order ("" for none).
	Place func(t certify.Task, allowed []string) string

	mu     sync.Mutex
	next   int
	Calls  [][]certify.Task // every Run's tasks
	RanOn  []string         // host of every task run, in order
	Events []string         // "host:command" of every task run
}

// Honest returns answer(command) from every host.
func Honest(answer func(cmd string) string) func(host, cmd string) ([]byte, error) {
	return func(_, cmd string) ([]byte, error) { return []byte(answer(cmd)), nil }
}

// Hosts implements certify.Scheduler.
func (p *Pool) Hosts(context.Context) ([]string, error) { return slices.Clone(p.Names), nil }

// Run implements certify.Scheduler.
func (p *Pool) Run(_ context.Context, tasks []certify.Task) ([]certify.Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.Calls = append(p.Calls, slices.Clone(tasks))
	taken := map[string]map[string]bool{}
	out := make([]certify.Result, len(tasks))
	for i, t := range tasks {
		var allowed []string
		for k := range p.Names {
			h := p.Names[(p.next+k)%len(p.Names)]
			if !slices.Contains(t.Exclude, h) {
				allowed = append(allowed, h)
			}
		}
		host := ""
		if p.Place != nil {
			host = p.Place(t, allowed)
		} else {
			for _, h := range allowed {
				if !taken[t.Group][h] {
					host = h
					break
				}
			}
			if host == "" && len(allowed) > 0 {
				host = allowed[0]
			}
		}
		if host == "" {
			out[i] = certify.Result{Task: t.ID, Err: errors.New("no allowed host")}
			continue
		}
		if slices.Contains(t.Exclude, host) {
			return nil, errors.New("certifytest: Place chose an excluded host")
		}
		p.next = (slices.Index(p.Names, host) + 1) % len(p.Names)
		if taken[t.Group] == nil {
			taken[t.Group] = map[string]bool{}
		}
		taken[t.Group][host] = true
		p.RanOn = append(p.RanOn, host)
		p.Events = append(p.Events, host+":"+t.Command)
		res, err := p.Answer(host, t.Command)
		out[i] = certify.Result{Task: t.ID, Host: host, Output: res, CPU: 250 * time.Millisecond, Err: err}
	}
	return out, nil
}
