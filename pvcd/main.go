// Command pvcd is the PVC peer daemon and its administration tool: it joins
// this host to a private virtual cluster (a TUN device with an address in
// 240.0.0.0/4, encrypted paths to the other peers across NATs and
// firewalls), and its verbs manage the cluster's keys, certificates and
// policy.
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

const summary = `pvcd: the peer daemon of PVC (Private Virtual Cluster).

It turns hosts in different administrative domains, behind NATs and
firewalls, into one virtual IP cluster in 240.0.0.0/4, so that unmodified
cluster software (Slurm, HTCondor, BitTorrent, ...) runs across them.`

func program() *cli.Program {
	return &cli.Program{
		Name:    "pvcd",
		Summary: summary,
		Version: version.String("pvcd"),
		Verbs:   verbs(),
	}
}

// verbs lists pvcd's subcommands; each lives in its own file.
func verbs() []cli.Verb {
	return []cli.Verb{
		clusterVerb(),
		tokenVerb(),
		keygenVerb(),
		certVerb(),
		revokeVerb(),
		policyVerb(),
		upVerb(),
		statusVerb(),
		peersVerb(),
		pingVerb(),
		downVerb(),
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := program().Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
