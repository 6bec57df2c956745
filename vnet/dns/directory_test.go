package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"testing"
)

func TestMemDirectory(t *testing.T) {
	d := NewMemDirectory()
	a1 := netip.MustParseAddr("240.1.0.1")
	a2 := netip.MustParseAddr("240.1.0.2")
	if err := d.Set("Alpha", a1); err != nil {
		t.Fatal(err)
	}
	<-d.Changed()
	if got, ok := d.LookupName("alpha"); !ok || got != a1 {
		t.Fatalf("LookupName(alpha) = %v, %v", got, ok)
	}
	if got, ok := d.LookupAddr(a1); !ok || got != "alpha" {
		t.Fatalf("LookupAddr = %q, %v", got, ok)
	}
	s := d.Serial()
	if err := d.Set("alpha", a1); err != nil || d.Serial() != s {
		t.Fatalf("same Set: err %v, serial %d -> %d", err, s, d.Serial())
	}
	select {
	case <-d.Changed():
		t.Fatal("Changed fired for a Set that changed nothing")
	default:
	}
	// Moving a peer frees its old address.
	if err := d.Set("alpha", a2); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.LookupAddr(a1); ok {
		t.Fatal("old address still maps to alpha")
	}
	if err := d.Set("beta", a2); !errors.Is(err, ErrAddrInUse) {
		t.Fatalf("Set on a taken address: %v, want ErrAddrInUse", err)
	}
	for _, bad := range []Peer{
		{"", a1}, {"a_b", a1}, {"-a", a1}, {"a.b", a1},
		{"ok", netip.MustParseAddr("198.18.0.1")}, {"ok", netip.MustParseAddr("::ffff:240.1.0.9")}, {"ok", netip.Addr{}},
	} {
		if err := d.Set(bad.Name, bad.Addr); !errors.Is(err, ErrBadPeer) {
			t.Errorf("Set(%q, %v) = %v, want ErrBadPeer", bad.Name, bad.Addr, err)
		}
	}
	if !d.Remove("ALPHA") || d.Remove("alpha") {
		t.Fatal("Remove did not report presence")
	}
	if d.Len() != 0 {
		t.Fatalf("Len = %d after Remove", d.Len())
	}
}

func TestMemDirectoryReplace(t *testing.T) {
	d := testDir(t)
	before := d.Peers()
	bad := [][]Peer{
		{{"x", netip.MustParseAddr("240.1.0.1")}, {"X", netip.MustParseAddr("240.1.0.2")}},
		{{"x", netip.MustParseAddr("240.1.0.1")}, {"y", netip.MustParseAddr("240.1.0.1")}},
		{{"x", netip.MustParseAddr("240.1.0.1")}, {"y z", netip.MustParseAddr("240.1.0.3")}},
	}
	for _, ps := range bad {
		if err := d.Replace(ps); err == nil {
			t.Errorf("Replace(%v): no error", ps)
		}
	}
	if got := d.Peers(); !reflect.DeepEqual(got, before) {
		t.Fatalf("a failed Replace changed the directory: %v", got)
	}
	want := []Peer{{"a", netip.MustParseAddr("240.1.9.9")}, {"b", netip.MustParseAddr("240.1.0.1")}}
	if err := d.Replace([]Peer{want[1], want[0]}); err != nil {
		t.Fatal(err)
	}
	if got := d.Peers(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Peers = %v, want %v", got, want)
	}
	if _, ok := d.LookupName("node1"); ok {
		t.Fatal("Replace kept an old peer")
	}
}

// Writers and readers in parallel: run with -race. Every reader sees a
// consistent pair (the name maps to the address that maps back to it).
func TestMemDirectoryConcurrent(t *testing.T) {
	d := NewMemDirectory()
	const n = 64
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{240, 1, byte(i >> 8), byte(i)}) }
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for round := 0; round < 200; round++ {
				i := (round*7 + w) % n
				name := fmt.Sprintf("p%d", i)
				if round%3 == 0 {
					d.Remove(name)
				} else if err := d.Set(name, addr(i)); err != nil {
					t.Error(err)
					return
				}
				if round%50 == 0 {
					ps := make([]Peer, 0, n/2)
					for j := 0; j < n/2; j++ {
						ps = append(ps, Peer{fmt.Sprintf("p%d", j), addr(j)})
					}
					if err := d.Replace(ps); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	var readers sync.WaitGroup
	for range 4 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				for i := 0; i < n; i++ {
					name := fmt.Sprintf("p%d", i)
					if a, ok := d.LookupName(name); ok && a != addr(i) {
						t.Errorf("%s -> %v", name, a)
						return
					}
					if got, ok := d.LookupAddr(addr(i)); ok && got != name {
						t.Errorf("%v -> %s", addr(i), got)
						return
					}
				}
				_ = d.Peers()
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()
}
