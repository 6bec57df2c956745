package ttcp_test

import (
	"context"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/vnet/ttcp"
)

func TestZZDebugUPnP(t *testing.T) {
	lab := netlab.New(t, netlab.Spec{Internet: []string{"b1"}, Sites: []netlab.SiteSpec{{Name: "up", Kind: netlab.UPnP}, {Name: "co", Kind: netlab.Cone}, {Name: "ub", Kind: netlab.UDPBlocked}}})
	for _, srvName := range []string{"co", "up"} {
		s := lab.Site(srvName)
		var srv *ttcp.Server
		if err := s.Hosts[0].Do(func() (err error) { srv, err = ttcp.NewServer(ttcp.ServerConfig{TUN: "pvcttcp1", OpenTTL: 2}); return }); err != nil {
			t.Fatal(err)
		}
		d := &ttcp.Dialer{Public: lab.Site("ub").PublicAddr}
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
		took, err := ttcpOnce(ctx, s.Hosts[0], srv, s.PublicAddr, lab.Site("ub").Hosts[0], d, 7411)
		cancel()
		t.Logf("server %s: %v %v", srvName, took, err)
		srv.Close()
	}
}
