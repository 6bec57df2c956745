package upnp

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/huin/goupnp"
	"github.com/huin/goupnp/dcps/internetgateway2"
	"github.com/huin/goupnp/soap"
)

// igdClient is what the three goupnp connection clients have in common.
type igdClient interface {
	AddPortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, proto string, intPort uint16, intClient string, enabled bool, desc string, lease uint32) error
	DeletePortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, proto string) error
	GetExternalIPAddressCtx(ctx context.Context) (string, error)
	GetGenericPortMappingEntryCtx(ctx context.Context, index uint16) (remoteHost string, extPort uint16, proto string, intPort uint16, intClient string, enabled bool, desc string, lease uint32, err error)
	GetSpecificPortMappingEntryCtx(ctx context.Context, remoteHost string, extPort uint16, proto string) (intPort uint16, intClient string, enabled bool, desc string, lease uint32, err error)
}

// igd is a Gateway over a goupnp client.
type igd struct {
	c        igdClient
	kind     string // service type, for logs
	location string // control URL
	local    netip.Addr
}

var _ Gateway = (*igd)(nil)

// Discover finds the Internet Gateway Device of this host's network. With a
// root-description URL (rootURL, e.g. "http://198.18.1.1:5000/rootDesc.xml",
// remembered from an earlier run or configured) it fetches that document
// (tens of milliseconds); if rootURL is empty or fails it searches with SSDP
// for WANIPConnection:2, WANIPConnection:1 and WANPPPConnection:1 in parallel
// (each search waits about 2 s). It prefers WANIPConnection:2, then :1, then
// PPP. Failure wraps ErrNoGateway. All sockets are made by the calling
// goroutine or by goroutines that end before Discover returns, except the
// HTTP connections of hc's transport (nil hc: one without keep-alives).
func Discover(ctx context.Context, rootURL string, hc *http.Client) (Gateway, error) {
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	}
	var byURLErr error
	if rootURL != "" {
		loc, err := url.Parse(rootURL)
		if err == nil {
			var root *goupnp.RootDevice
			if root, err = goupnp.DeviceByURLCtx(ctx, loc); err == nil {
				var gws []*igd
				if gws, err = fromRoot(root, loc); err == nil && len(gws) == 0 {
					err = errors.New("no WANIPConnection or WANPPPConnection service in the device")
				}
				if err == nil {
					return finish(ctx, gws[0], hc)
				}
			}
		}
		byURLErr = fmt.Errorf("root description %s: %w", rootURL, err)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoGateway, byURLErr)
		}
	}
	gws, err := search(ctx)
	if err == nil && len(gws) == 0 {
		err = errors.New("no answer to SSDP search")
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoGateway, errors.Join(byURLErr, fmt.Errorf("SSDP: %w", err)))
	}
	return finish(ctx, gws[0], hc)
}

// finish gives g its own HTTP client and finds the local address.
func finish(ctx context.Context, g *igd, hc *http.Client) (Gateway, error) {
	type soapUser interface{ soapClient() *soap.SOAPClient }
	if sc := g.c.(soapUser).soapClient(); sc != nil {
		sc.HTTPClient = *hc
		g.location = sc.EndpointURL.String()
		if !g.local.IsValid() {
			a, err := localAddrTowards(ctx, sc.EndpointURL.Hostname())
			if err != nil {
				return nil, fmt.Errorf("%w: local address towards %s: %w", ErrNoGateway, g.location, err)
			}
			g.local = a
		}
	}
	return g, nil
}

// The generated clients embed goupnp.ServiceClient; these wrappers reach
// its SOAP client.
type (
	ip2Client struct {
		*internetgateway2.WANIPConnection2
	}
	ip1Client struct {
		*internetgateway2.WANIPConnection1
	}
	pppClient struct {
		*internetgateway2.WANPPPConnection1
	}
)

func (c ip2Client) soapClient() *soap.SOAPClient { return c.SOAPClient }
func (c ip1Client) soapClient() *soap.SOAPClient { return c.SOAPClient }
func (c pppClient) soapClient() *soap.SOAPClient { return c.SOAPClient }

func local(sc goupnp.ServiceClient) netip.Addr {
	a, _ := netip.AddrFromSlice(sc.LocalAddr())
	return a.Unmap()
}

// fromRoot returns the connection services of a root device, preferred first.
func fromRoot(root *goupnp.RootDevice, loc *url.URL) ([]*igd, error) {
	var out []*igd
	ip2, err2 := internetgateway2.NewWANIPConnection2ClientsFromRootDevice(root, loc)
	for _, c := range ip2 {
		out = append(out, &igd{c: ip2Client{c}, kind: "WANIPConnection:2"})
	}
	ip1, err1 := internetgateway2.NewWANIPConnection1ClientsFromRootDevice(root, loc)
	for _, c := range ip1 {
		out = append(out, &igd{c: ip1Client{c}, kind: "WANIPConnection:1"})
	}
	ppp, errp := internetgateway2.NewWANPPPConnection1ClientsFromRootDevice(root, loc)
	for _, c := range ppp {
		out = append(out, &igd{c: pppClient{c}, kind: "WANPPPConnection:1"})
	}
	if len(out) == 0 {
		return nil, errors.Join(err2, err1, errp)
	}
	return out, nil
}

// search runs the three SSDP searches in parallel and waits for all.
func search(ctx context.Context) ([]*igd, error) {
	var (
		wg         sync.WaitGroup
		ip2        []*internetgateway2.WANIPConnection2
		ip1        []*internetgateway2.WANIPConnection1
		ppp        []*internetgateway2.WANPPPConnection1
		e2, e1, ep error
	)
	wg.Add(3)
	go func() { defer wg.Done(); ip2, _, e2 = internetgateway2.NewWANIPConnection2ClientsCtx(ctx) }()
	go func() { defer wg.Done(); ip1, _, e1 = internetgateway2.NewWANIPConnection1ClientsCtx(ctx) }()
	go func() { defer wg.Done(); ppp, _, ep = internetgateway2.NewWANPPPConnection1ClientsCtx(ctx) }()
	wg.Wait()
	var out []*igd
	for _, c := range ip2 {
		out = append(out, &igd{c: ip2Client{c}, kind: "WANIPConnection:2", local: local(c.ServiceClient)})
	}
	for _, c := range ip1 {
		out = append(out, &igd{c: ip1Client{c}, kind: "WANIPConnection:1", local: local(c.ServiceClient)})
	}
	for _, c := range ppp {
		out = append(out, &igd{c: pppClient{c}, kind: "WANPPPConnection:1", local: local(c.ServiceClient)})
	}
	if len(out) == 0 {
		return nil, errors.Join(e2, e1, ep, ctx.Err())
	}
	return out, nil
}

// soapErr turns a SOAP fault into an *Error.
func soapErr(err error) error {
	var f *soap.SOAPFaultError
	if errors.As(err, &f) {
		code := f.Detail.UPnPError.Errorcode
		if code == 0 {
			code = CodeActionFailed
		}
		desc := strings.TrimSpace(f.Detail.UPnPError.ErrorDescription)
		if desc == "" {
			desc = strings.TrimSpace(f.FaultString)
		}
		return &Error{Code: code, Description: desc}
	}
	return err
}

func leaseSeconds(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	s := math.Ceil(d.Seconds())
	if s > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(s)
}

func (g *igd) AddPortMapping(ctx context.Context, m Mapping) error {
	return soapErr(g.c.AddPortMappingCtx(ctx, "", m.ExternalPort, m.Protocol, m.InternalPort, m.InternalClient.String(), true, m.Description, leaseSeconds(m.Lease)))
}

func (g *igd) DeletePortMapping(ctx context.Context, port uint16, proto string) error {
	return soapErr(g.c.DeletePortMappingCtx(ctx, "", port, proto))
}

func (g *igd) PortMappingByIndex(ctx context.Context, index uint16) (Mapping, error) {
	_, ext, proto, in, client, _, desc, lease, err := g.c.GetGenericPortMappingEntryCtx(ctx, index)
	if err != nil {
		return Mapping{}, soapErr(err)
	}
	a, _ := netip.ParseAddr(client)
	return Mapping{ExternalPort: ext, Protocol: strings.ToUpper(proto), InternalPort: in, InternalClient: a,
		Description: desc, Lease: time.Duration(lease) * time.Second}, nil
}

func (g *igd) PortMapping(ctx context.Context, port uint16, proto string) (Mapping, error) {
	in, client, _, desc, lease, err := g.c.GetSpecificPortMappingEntryCtx(ctx, "", port, proto)
	if err != nil {
		return Mapping{}, soapErr(err)
	}
	a, _ := netip.ParseAddr(client)
	return Mapping{ExternalPort: port, Protocol: proto, InternalPort: in, InternalClient: a,
		Description: desc, Lease: time.Duration(lease) * time.Second}, nil
}

func (g *igd) ExternalIP(ctx context.Context) (netip.Addr, error) {
	s, err := g.c.GetExternalIPAddressCtx(ctx)
	if err != nil {
		return netip.Addr{}, soapErr(err)
	}
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("gateway's external address %q: %w", s, err)
	}
	return a.Unmap(), nil
}

func (g *igd) LocalAddr() netip.Addr { return g.local }
func (g *igd) Location() string      { return g.kind + " " + g.location }
