package upnp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Gateway is the small part of an Internet Gateway Device's WANIPConnection
// (or WANPPPConnection) service that the Mapper uses. The goupnp-backed
// implementation comes from Discover; upnptest.Gateway is an in-memory fake.
//
// Methods are called from one goroutine at a time. A refusal by the device
// (a SOAP fault) is returned as an *Error; anything else (timeouts, refused
// TCP connections, bad XML) is a transport failure.
type Gateway interface {
	// AddPortMapping creates or renews m. Renewing a mapping that exists
	// for the same internal client extends its lease.
	AddPortMapping(ctx context.Context, m Mapping) error
	// DeletePortMapping deletes the mapping of externalPort/protocol.
	DeletePortMapping(ctx context.Context, externalPort uint16, protocol string) error
	// PortMappingByIndex returns the index'th mapping of the device's
	// table (GetGenericPortMappingEntry); past the end, an *Error with code
	// 713 (SpecifiedArrayIndexInvalid).
	PortMappingByIndex(ctx context.Context, index uint16) (Mapping, error)
	// PortMapping returns the mapping of externalPort/protocol
	// (GetSpecificPortMappingEntry); none is an *Error with code 714.
	PortMapping(ctx context.Context, externalPort uint16, protocol string) (Mapping, error)
	// ExternalIP returns the device's external (WAN) address.
	ExternalIP(ctx context.Context) (netip.Addr, error)
	// LocalAddr is this host's address towards the device: the internal
	// client that mappings point to.
	LocalAddr() netip.Addr
	// Location names the device for logs and status (its control URL).
	Location() string
}

// Mapping is one entry of a gateway's port-mapping table.
type Mapping struct {
	ExternalPort   uint16
	Protocol       string // "UDP" or "TCP"
	InternalPort   uint16
	InternalClient netip.Addr
	Description    string
	// Lease is the lifetime asked for (AddPortMapping) or left (listing);
	// zero means permanent. Gateways count in whole seconds.
	Lease time.Duration
}

func (m Mapping) String() string {
	return fmt.Sprintf("%s %d->%s:%d %q lease %v", m.Protocol, m.ExternalPort, m.InternalClient, m.InternalPort, m.Description, m.Lease)
}

// UPnP error codes (UPnP IGD WANIPConnection:2 §2.4) that the Mapper acts on.
const (
	CodeInvalidArgs             = 402
	CodeActionFailed            = 501
	CodeNotAuthorized           = 606
	CodeArrayIndexInvalid       = 713
	CodeNoSuchEntry             = 714
	CodeConflictInMappingEntry  = 718
	CodeSamePortValuesRequired  = 724
	CodeOnlyPermanentLeases     = 725
	CodeNoPortMapsAvailable     = 728
	CodeConflictWithOtherMechan = 729
)

// Error is a refusal from the gateway: the UPnP error in a SOAP fault.
type Error struct {
	Code        int    // e.g. 718
	Description string // e.g. "ConflictInMappingEntry"
}

func (e *Error) Error() string {
	if e.Description == "" {
		return fmt.Sprintf("UPnP error %d", e.Code)
	}
	return fmt.Sprintf("%d %s", e.Code, e.Description)
}

// errorCode returns the UPnP error code in err, or 0.
func errorCode(err error) int {
	var ue *Error
	if errors.As(err, &ue) {
		return ue.Code
	}
	return 0
}

// localAddrTowards returns the source address the kernel would use to reach
// host (a name or an address, from a control URL). A connected UDP socket
// sends nothing.
func localAddrTowards(ctx context.Context, host string) (netip.Addr, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp4", net.JoinHostPort(host, "1900"))
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	ap, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		return netip.Addr{}, err
	}
	return ap.Addr().Unmap(), nil
}
