// Command pvc-broker is PVC's brokering service. Site administrators run
// several replicas on reachable hosts; peers use them to meet: the brokers
// observe public endpoints, keep the registry of master-signed objects,
// forward signalling between peers, carry Traversing-TCP SYNs and relay
// traffic as a last resort. Brokers are not trusted for identity.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/internal/version"
)

const summary = `pvc-broker: the brokering service of PVC (Private Virtual Cluster).

Run several replicas on reachable hosts. Peers keep sessions with all of
them; brokers help peers meet but are not trusted for identity.`

func program() *cli.Program {
	serve := cli.Verb{Name: "serve", Summary: "run the broker in the foreground (the default)", Run: runServe}
	return &cli.Program{
		Name:    "pvc-broker",
		Summary: summary,
		Version: version.String("pvc-broker"),
		Verbs:   []cli.Verb{serve},
		Default: &serve,
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := program().Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
