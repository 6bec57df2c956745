// Package bindtest holds test doubles for package bind: an in-memory broker
// relay that connects the Binds of one test process, and a probe Auth that
// can be switched off.
package bindtest

import (
	"sync"
	"sync/atomic"

	"github.com/pvc-project/pvc/vnet/bind"
)

// Receiver takes relayed datagrams: a *bind.Bind, or the overlay engine.
type Receiver interface {
	DeliverRelay(from string, pkt []byte)
}

// Relay is an in-memory broker relay between named receivers.
type Relay struct {
	mu      sync.Mutex
	binds   map[string]Receiver
	blocked map[string]bool
	Sent    atomic.Uint64 // datagrams carried
}

// NewRelay returns an empty relay.
func NewRelay() *Relay {
	return &Relay{binds: map[string]Receiver{}, blocked: map[string]bool{}}
}

// Attach registers b as the peer name; datagrams to name reach b.
func (r *Relay) Attach(name string, b Receiver) {
	r.mu.Lock()
	r.binds[name] = b
	r.mu.Unlock()
}

// Block stops (or resumes) carrying datagrams to name.
func (r *Relay) Block(name string, blocked bool) {
	r.mu.Lock()
	r.blocked[name] = blocked
	r.mu.Unlock()
}

// From returns the bind.Relay that the peer named from uses to send.
func (r *Relay) From(from string) bind.Relay { return sender{r, from} }

type sender struct {
	r    *Relay
	from string
}

func (s sender) SendRelay(peer string, pkt []byte) error {
	s.r.mu.Lock()
	b, blocked := s.r.binds[peer], s.r.blocked[peer]
	s.r.mu.Unlock()
	if b != nil && !blocked {
		s.r.Sent.Add(1)
		b.DeliverRelay(s.from, pkt)
	}
	return nil
}

// Auth is a probe Auth with fake signatures that can be switched off, so a
// test can make a direct path stop answering.
type Auth struct{ Off atomic.Bool }

// Sign implements bind.Auth.
func (a *Auth) Sign(msg []byte) []byte { return []byte("bindtest-sig") }

// Verify implements bind.Auth.
func (a *Auth) Verify(peer string, msg, sig []byte) bool {
	return !a.Off.Load() && string(sig) == "bindtest-sig"
}
