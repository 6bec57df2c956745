// Command pvc-upnp-probe runs PVC's UPnP Mapper (vnet/upnp) for one UDP
// port until SIGTERM or SIGINT, printing the mapped endpoint and every
// status change; then it deletes the mapping. Run it inside a lab host to
// look at UPnP by hand:
//
//	ip netns exec pvcID-home-h1 pvc-upnp-probe -port 7400 -root-url http://198.18.1.1:5000/rootDesc.xml
//
// The lab tests of vnet/upnp run the same program (upnptest.Probe).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/pvc-project/pvc/vnet/upnp/upnptest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := upnptest.Probe(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "pvc-upnp-probe:", err)
		os.Exit(1)
	}
}
