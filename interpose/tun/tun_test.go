package tun

import (
	"errors"
	"net/netip"
	"testing"
)

func TestCreateBadConfig(t *testing.T) {
	for _, c := range []Config{
		{Prefix: netip.MustParsePrefix("198.18.0.5/24")}, // not in 240.0.0.0/4
		{Prefix: netip.MustParsePrefix("240.1.0.1/2")},   // prefix wider than the overlay
		{}, // no address
		{Prefix: netip.MustParsePrefix("240.1.0.1/16"), MTU: 100},
		{Prefix: netip.MustParsePrefix("240.1.0.1/16"), Name: "a-name-far-too-long"},
	} {
		if _, err := Create(c); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: got %v, want ErrConfig", c, err)
		}
	}
}
