package bundle

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/pvc-project/pvc/security/internal/sectest"
)

func sample(t testing.TB) *Bundle {
	b := &Bundle{Cluster: "lab", Subnet: netip.MustParsePrefix("240.7.0.0/16"), Domain: "lab.pvc", Version: 1,
		Brokers: []Broker{{Addr: "203.0.113.10:7000", Key: sectest.Pub(9)}, {Addr: "broker.example.org:7000"}}}
	if err := b.Sign(sectest.Key(1)); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	b := sample(t)
	got, err := Decode(b.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.Cluster != "lab" || got.Subnet != b.Subnet || got.Domain != "lab.pvc" || len(got.Brokers) != 2 ||
		!got.Brokers[0].Key.Equal(sectest.Pub(9)) || got.Brokers[1].Key != nil || !got.MasterKey.Equal(sectest.Pub(1)) {
		t.Errorf("decoded %+v", got)
	}
	if !bytes.Equal(got.Encode(), b.Encode()) {
		t.Error("re-encoding differs")
	}
	if err := got.Verify(sectest.Pub(1)); err != nil {
		t.Error(err)
	}
	if err := got.Verify(sectest.Pub(2)); !errors.Is(err, ErrWrongMaster) {
		t.Errorf("Verify(other master) = %v, want ErrWrongMaster", err)
	}
}

func TestBitFlips(t *testing.T) {
	sectest.FlipEachBit(t, sample(t).Encode(), func(b []byte) error {
		x, err := Decode(b)
		if err != nil {
			return err
		}
		return x.Verify(sectest.Pub(1))
	})
	// Even without a known master key, a flip never decodes: the bundle
	// carries its own master key and signature.
	sectest.FlipEachBit(t, sample(t).Encode(), func(b []byte) error { _, err := Decode(b); return err })
}

func TestCheckSubnet(t *testing.T) {
	for _, tc := range []struct {
		p  string
		ok bool
	}{
		{"240.7.0.0/16", true}, {"250.0.0.0/8", true}, {"255.255.255.0/24", true},
		{"198.18.0.0/16", false}, {"240.0.0.0/3", false}, {"240.0.0.0/4", false},
		{"240.7.0.1/16", false}, {"240.7.7.0/25", false}, {"224.0.0.0/16", false},
	} {
		err := CheckSubnet(netip.MustParsePrefix(tc.p))
		if (err == nil) != tc.ok {
			t.Errorf("CheckSubnet(%s) = %v, want ok=%v", tc.p, err, tc.ok)
		}
	}
}

func TestChooseSubnet(t *testing.T) {
	var taken []netip.Prefix
	for i := 0; i < 50; i++ {
		p, err := ChooseSubnet(taken, 16)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckSubnet(p); err != nil {
			t.Fatal(err)
		}
		for _, q := range taken {
			if p.Overlaps(q) {
				t.Fatalf("%v overlaps %v", p, q)
			}
		}
		taken = append(taken, p)
	}
	// Only one /16 left free outside a block of /8s: it must be found.
	taken = nil
	for a := 240; a < 255; a++ {
		if a != 247 {
			taken = append(taken, netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a), 0, 0, 0}), 8))
		}
	}
	for b := 0; b < 256; b++ {
		if b != 99 {
			taken = append(taken, netip.PrefixFrom(netip.AddrFrom4([4]byte{247, byte(b), 0, 0}), 16))
		}
	}
	if p, err := ChooseSubnet(taken, 16); err != nil || p != netip.MustParsePrefix("247.99.0.0/16") {
		t.Errorf("ChooseSubnet = %v, %v; want 247.99.0.0/16", p, err)
	}
	taken = append(taken, netip.MustParsePrefix("247.99.0.0/16"))
	if _, err := ChooseSubnet(taken, 16); err == nil {
		t.Error("a full space gave a subnet")
	}
}

func TestParseBroker(t *testing.T) {
	b, err := ParseBroker("203.0.113.1:7000=" + "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=")
	if err != nil || b.Addr != "203.0.113.1:7000" || len(b.Key) != 32 {
		t.Errorf("ParseBroker = %+v, %v", b, err)
	}
	for _, s := range []string{"203.0.113.1", "203.0.113.1:0", ":7000", "h:7000=short", "h:99999"} {
		if _, err := ParseBroker(s); err == nil {
			t.Errorf("ParseBroker(%q) accepted", s)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(sample(f).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := Decode(b)
		if err != nil {
			return
		}
		if !bytes.Equal(x.Encode(), b) {
			t.Fatal("re-encoding differs")
		}
	})
}
