package certify

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Status is a job's outcome.
type Status string

// Job outcomes.
const (
	StatusAccepted   Status = "accepted"
	StatusNoMajority Status = "no-majority" // the votes (or credibilities) decided nothing
	StatusFailed     Status = "failed"      // too few hosts, or tasks that returned no result
)

// JobOutcome is what happened to one job.
type JobOutcome struct {
	Job         string   `json:"job"`
	Status      Status   `json:"status"`
	Reason      string   `json:"reason,omitempty"`
	SHA256      string   `json:"sha256,omitempty"` // of the accepted result
	Hosts       []string `json:"hosts,omitempty"`  // hosts whose result was accepted
	Replicas    int      `json:"replicas"`         // results received
	Tasks       int      `json:"tasks"`            // tasks submitted (including failed and discarded ones)
	Rerun       bool     `json:"rerun"`            // a second phase (vote) or more replicas (credibility) were needed
	Credibility float64  `json:"credibility,omitempty"`
	Output      []byte   `json:"-"` // the accepted result
}

// Report is the outcome of a run.
type Report struct {
	Policy      Policy  `json:"policy"`
	Replicas    int     `json:"replicas"`
	SpotEvery   int     `json:"spot_every"`
	TargetError float64 `json:"target_error,omitempty"`

	Jobs       int `json:"jobs"`
	Accepted   int `json:"accepted"`
	Rerun      int `json:"rerun"`
	NoMajority int `json:"no_majority"`
	Failed     int `json:"failed"`

	Executions   int `json:"tasks_run"`     // every task: replicas, re-runs, spot-checks
	ReplicaTasks int `json:"replica_tasks"` // tasks for the jobs (not the checks)
	Checks       int `json:"spot_checks"`
	ChecksFailed int `json:"spot_checks_failed"`
	TaskFailures int `json:"task_failures"` // tasks that returned no result
	Discarded    int `json:"discarded"`     // results from a host the job had already used, or blacklisted meanwhile

	ReplicasPerAccepted float64  `json:"replicas_per_accepted"`
	Blacklisted         []string `json:"blacklisted"` // hosts blacklisted during this run
	ElapsedSeconds      float64  `json:"elapsed_seconds"`

	Results []JobOutcome `json:"results"`
}

func (r *Report) add(o JobOutcome) {
	r.Results = append(r.Results, o)
	switch o.Status {
	case StatusAccepted:
		r.Accepted++
	case StatusNoMajority:
		r.NoMajority++
	case StatusFailed:
		r.Failed++
	}
	if o.Rerun {
		r.Rerun++
	}
}

func (r *Report) progress() Progress {
	return Progress{
		Jobs: r.Jobs, Done: len(r.Results), Accepted: r.Accepted, Rerun: r.Rerun,
		NoMajority: r.NoMajority, Failed: r.Failed, Checks: r.Checks,
		Blacklisted: len(r.Blacklisted), Executions: r.Executions,
	}
}

func (r *Report) finish(elapsed time.Duration) {
	r.ElapsedSeconds = elapsed.Seconds()
	if r.Accepted > 0 {
		r.ReplicasPerAccepted = float64(r.ReplicaTasks) / float64(r.Accepted)
	}
	if r.Blacklisted == nil {
		r.Blacklisted = []string{}
	}
	sort.Slice(r.Results, func(i, j int) bool { return r.Results[i].Job < r.Results[j].Job })
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// WriteText writes the report for a person.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	pol := string(r.Policy)
	if r.Policy == PolicyCredibility {
		pol += fmt.Sprintf(" (target error %g)", r.TargetError)
	} else {
		pol += fmt.Sprintf(" (m+1 = %d replicas, 2m+1 = %d on disagreement)", r.Replicas, 2*r.Replicas-1)
	}
	spot := "none"
	if r.SpotEvery > 0 {
		spot = fmt.Sprintf("one slot in %d", r.SpotEvery)
	}
	fmt.Fprintf(&b, "policy: %s; spot-checks: %s\n", pol, spot)
	fmt.Fprintf(&b, "jobs: %d: %d accepted, %d without majority, %d failed; %d needed a re-run\n",
		r.Jobs, r.Accepted, r.NoMajority, r.Failed, r.Rerun)
	fmt.Fprintf(&b, "tasks run: %d (%d for the jobs, %d spot-checks of which %d failed; %d returned no result, %d discarded)\n",
		r.Executions, r.ReplicaTasks, r.Checks, r.ChecksFailed, r.TaskFailures, r.Discarded)
	fmt.Fprintf(&b, "replicas per accepted result: %.2f\n", r.ReplicasPerAccepted)
	bl := "none"
	if len(r.Blacklisted) > 0 {
		bl = strings.Join(r.Blacklisted, ", ")
	}
	fmt.Fprintf(&b, "blacklisted in this run: %s\n", bl)
	fmt.Fprintf(&b, "time: %.1f s\n", r.ElapsedSeconds)
	for _, o := range r.Results {
		if o.Status != StatusAccepted {
			fmt.Fprintf(&b, "  %s: %s: %s\n", o.Job, o.Status, o.Reason)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func sortStrings(s []string) { sort.Strings(s) }
