// Command pvc-certify runs jobs through a batch scheduler (Slurm, or local
// processes on simulated hosts) and certifies their results against hosts
// that return wrong ones: replication and voting, spot-checks with known
// answers, a persistent blacklist, credibility-based voting and a ledger of
// credits. See docs/certify.md.
//
// Each verb is a function func(ctx, args, stdout, stderr) error so that it
// can be tested without a process; main only wires it to the OS.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/internal/version"
)

const summary = `pvc-certify: result certification for PVC's grid layer.

It submits every job of a job file several times to an unmodified batch
scheduler (Slurm, or local processes), compares the results, and accepts
one only when enough hosts agree (voting) or when the hosts that returned
it are credible enough (credibility-based voting). One job in k is a
spot-check with a known answer; a host that fails one is blacklisted, with
the evidence, and gets no more work. Hosts earn credits: the CPU seconds of
their accepted work.`

func program() *cli.Program {
	return &cli.Program{
		Name:    "pvc-certify",
		Summary: summary,
		Version: version.String("pvc-certify"),
		Verbs:   []cli.Verb{runVerb(), hostsVerb()},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := program().Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
