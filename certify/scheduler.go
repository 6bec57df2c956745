package certify

import (
	"context"
	"time"
)

// Task is one execution of a job that a Scheduler runs. Its ID is opaque
// and says nothing about whether the task is a replica or a spot-check, so
// that a host cannot tell them apart.
type Task struct {
	ID      string   // unique within a run, [A-Za-z0-9._-]
	Command string   // a shell command line (sh -c)
	Dir     string   // working directory; "" means the scheduler's own
	Exclude []string // hosts the task must not run on
	// Group names the job the task belongs to: tasks of one group should
	// run on distinct hosts. A scheduler that cannot promise it may place
	// two on one host; the Certifier then discards the extra result and
	// submits it again.
	Group string
}

// Result is what one task returned.
type Result struct {
	Task   string        // Task.ID
	Host   string        // the host that ran it, as the scheduler reports it
	Output []byte        // the task's standard output: the job's result
	CPU    time.Duration // CPU time the task used (user + system), 0 if unknown
	// Err is set when the task did not produce a result (non-zero exit,
	// scheduler failure, timeout); Output is then not a result.
	Err error
}

// Scheduler runs tasks on a pool of hosts. Implementations: package
// certify/slurm (sbatch, squeue, --exclude), certify/local (processes on
// simulated hosts), certify/sim (an in-memory model for simulations). An
// HTCondor adapter fits the same shape (docs/certify.md).
type Scheduler interface {
	// Hosts lists the hosts of the pool, blacklisted or not.
	Hosts(ctx context.Context) ([]string, error)
	// Run runs every task, each on a host not in its Exclude list, and
	// returns one Result per task in the order of tasks. It returns an
	// error only when the scheduler itself failed (then no result is
	// usable); a task's own failure is in its Result.Err.
	Run(ctx context.Context, tasks []Task) ([]Result, error)
}
