package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pvc-project/pvc/security/name"
)

// Errors of the directory.
var (
	ErrBadPeer   = errors.New("bad peer entry")
	ErrAddrInUse = errors.New("address already belongs to another peer")
)

// VirtualNet is the range every cluster address lies in.
var VirtualNet = netip.MustParsePrefix("240.0.0.0/4")

// Directory is where the name service looks names up. The data plane feeds
// it; lookups run on every query and must be cheap and must not block long.
type Directory interface {
	// LookupName returns the virtual address of the peer called name: one
	// lowercase DNS label, without the cluster domain.
	LookupName(name string) (netip.Addr, bool)
	// LookupAddr returns the name (one lowercase label) of the peer that
	// has the virtual address a.
	LookupAddr(a netip.Addr) (string, bool)
}

// Peer is one entry of a directory.
type Peer struct {
	Name string     // one DNS label (security/name rule), lowercase
	Addr netip.Addr // IPv4 inside 240.0.0.0/4
}

// CheckPeer returns nil if p can be a directory entry (ErrBadPeer).
func CheckPeer(p Peer) error {
	if err := name.Check(p.Name); err != nil {
		return fmt.Errorf("%w: %v", ErrBadPeer, err)
	}
	if !p.Addr.Is4() || !VirtualNet.Contains(p.Addr) {
		return fmt.Errorf("%w: %s: address %v is not IPv4 in %v", ErrBadPeer, p.Name, p.Addr, VirtualNet)
	}
	return nil
}

// snapshot is an immutable view of the directory. Writers build a new one
// and publish it; readers never wait.
type snapshot struct {
	byName map[string]netip.Addr
	byAddr map[netip.Addr]string
	serial uint32
}

// MemDirectory is the in-memory Directory of a running pvcd. Lookups read
// an atomically published snapshot and never block; writers copy the
// snapshot (copy-on-write), so a write costs O(peers), which is fine for
// joins and leaves at human or admission rates. Use Replace for bulk loads.
// The zero value is not usable: call NewMemDirectory.
type MemDirectory struct {
	mu      sync.Mutex // serializes writers; readers do not take it
	snap    atomic.Pointer[snapshot]
	changed chan struct{}
}

// NewMemDirectory returns an empty directory.
func NewMemDirectory() *MemDirectory {
	d := &MemDirectory{changed: make(chan struct{}, 1)}
	d.snap.Store(&snapshot{
		byName: map[string]netip.Addr{},
		byAddr: map[netip.Addr]string{},
		serial: 1,
	})
	return d
}

// LookupName implements Directory.
func (d *MemDirectory) LookupName(name string) (netip.Addr, bool) {
	a, ok := d.snap.Load().byName[name]
	return a, ok
}

// LookupAddr implements Directory.
func (d *MemDirectory) LookupAddr(a netip.Addr) (string, bool) {
	n, ok := d.snap.Load().byAddr[a]
	return n, ok
}

// Serial is a number that changes whenever the directory does; the name
// service uses it as the SOA serial.
func (d *MemDirectory) Serial() uint32 { return d.snap.Load().serial }

// Len returns the number of peers.
func (d *MemDirectory) Len() int { return len(d.snap.Load().byName) }

// Peers returns all entries sorted by name.
func (d *MemDirectory) Peers() []Peer {
	s := d.snap.Load()
	out := make([]Peer, 0, len(s.byName))
	for n, a := range s.byName {
		out = append(out, Peer{Name: n, Addr: a})
	}
	slices.SortFunc(out, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Changed returns a channel that receives a value after the directory
// changed (coalesced: one pending value at most). It is meant for one
// consumer, such as the loop that rewrites the hosts file.
func (d *MemDirectory) Changed() <-chan struct{} { return d.changed }

// Set adds the peer or moves it to a new address. The name is folded to
// lowercase. An address held by another peer is refused (ErrAddrInUse):
// remove that peer first.
func (d *MemDirectory) Set(name string, a netip.Addr) error {
	p := Peer{Name: strings.ToLower(name), Addr: a}
	if err := CheckPeer(p); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.snap.Load()
	if cur, ok := old.byName[p.Name]; ok && cur == p.Addr {
		return nil
	}
	if owner, ok := old.byAddr[p.Addr]; ok && owner != p.Name {
		return fmt.Errorf("%w: %v is %s's, not %s's", ErrAddrInUse, p.Addr, owner, p.Name)
	}
	s := old.cloneLocked()
	if cur, ok := s.byName[p.Name]; ok {
		delete(s.byAddr, cur)
	}
	s.byName[p.Name] = p.Addr
	s.byAddr[p.Addr] = p.Name
	d.publishLocked(s)
	return nil
}

// Remove deletes the peer called name (folded to lowercase) and reports
// whether it was there.
func (d *MemDirectory) Remove(name string) bool {
	name = strings.ToLower(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.snap.Load()
	a, ok := old.byName[name]
	if !ok {
		return false
	}
	s := old.cloneLocked()
	delete(s.byName, name)
	delete(s.byAddr, a)
	d.publishLocked(s)
	return true
}

// Replace sets the whole directory to peers. It checks every entry first
// and changes nothing if one is bad or if two share a name or an address.
func (d *MemDirectory) Replace(peers []Peer) error {
	s := &snapshot{
		byName: make(map[string]netip.Addr, len(peers)),
		byAddr: make(map[netip.Addr]string, len(peers)),
	}
	for _, p := range peers {
		p.Name = strings.ToLower(p.Name)
		if err := CheckPeer(p); err != nil {
			return err
		}
		if _, dup := s.byName[p.Name]; dup {
			return fmt.Errorf("%w: name %s twice", ErrBadPeer, p.Name)
		}
		if owner, dup := s.byAddr[p.Addr]; dup {
			return fmt.Errorf("%w: %v is %s's, not %s's", ErrAddrInUse, p.Addr, owner, p.Name)
		}
		s.byName[p.Name] = p.Addr
		s.byAddr[p.Addr] = p.Name
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s.serial = d.snap.Load().serial
	d.publishLocked(s)
	return nil
}

// cloneLocked copies s; the caller holds d.mu.
func (s *snapshot) cloneLocked() *snapshot {
	n := &snapshot{
		byName: make(map[string]netip.Addr, len(s.byName)+1),
		byAddr: make(map[netip.Addr]string, len(s.byAddr)+1),
		serial: s.serial,
	}
	for k, v := range s.byName {
		n.byName[k] = v
	}
	for k, v := range s.byAddr {
		n.byAddr[k] = v
	}
	return n
}

// publishLocked bumps the serial of s, stores it and signals Changed.
// The caller holds d.mu.
func (d *MemDirectory) publishLocked(s *snapshot) {
	s.serial++
	if s.serial == 0 {
		s.serial = 1
	}
	d.snap.Store(s)
	select {
	case d.changed <- struct{}{}:
	default:
	}
}
