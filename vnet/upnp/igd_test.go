package upnp

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/huin/goupnp/soap"
)

func TestSOAPFaultBecomesError(t *testing.T) {
	f := &soap.SOAPFaultError{FaultCode: "s:Client", FaultString: "UPnPError"}
	f.Detail.UPnPError.Errorcode = 718
	f.Detail.UPnPError.ErrorDescription = "ConflictInMappingEntry"
	err := soapErr(fmt.Errorf("wrapped: %w", f))
	var ue *Error
	if !errors.As(err, &ue) || ue.Code != CodeConflictInMappingEntry || err.Error() != "718 ConflictInMappingEntry" {
		t.Errorf("soapErr = %v (%T)", err, err)
	}
	// A fault without a UPnP error is a generic action failure.
	if code := errorCode(soapErr(&soap.SOAPFaultError{FaultString: "bad"})); code != CodeActionFailed {
		t.Errorf("code %d", code)
	}
	// Transport errors stay what they are.
	plain := errors.New("connection refused")
	if soapErr(plain) != plain || errorCode(plain) != 0 {
		t.Error("transport error changed")
	}
}

func TestLeaseSeconds(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want uint32
	}{{0, 0}, {-time.Second, 0}, {time.Millisecond, 1}, {4 * time.Second, 4}, {1500 * time.Millisecond, 2}, {time.Hour, 3600}, {1 << 62, 1<<32 - 1}} {
		if got := leaseSeconds(tc.d); got != tc.want {
			t.Errorf("leaseSeconds(%v) = %d, want %d", tc.d, got, tc.want)
		}
	}
}
