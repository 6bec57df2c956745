// Package policy holds PVC's two traffic policies and their evaluation.
//
// The global policy is written by the cluster's master as text (see
// ParseGlobal), compiled and signed: ordered rules "ACTION from SELECTOR to
// SELECTOR [proto P] [port LIST]", first match wins, and a default action.
// "from" is the side that opens the flow, "to" the side that accepts it;
// ports are the accepting side's ports.
//
// The local policy is a text file that a site's administrator writes on each
// host (see ParseLocal): the site's networks, whether this host may talk to
// peers outside them (inbound and outbound separately), and which local
// ports peers may reach.
//
// An Engine, compiled once from both for this host, decides each new flow
// without allocating: both policies must allow it.
//
// A global policy is a signed.Object of kind KindPolicy whose cluster and
// subject are the cluster's name and version the policy's version. Body
// (big-endian, canonical):
//
//	format   1                                  1 byte
//	default  0 deny, 1 allow                    1 byte
//	count    number of rules                    2 bytes
//	rules    each: action (1), from, to, proto (1), nports (1), ports (4 each)
//	         selector: kind (1: 0 any, 1 group, 2 peer) + length (1) + name (empty for any)
//	         port range: low (2) + high (2), low <= high
package policy

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/pvc-project/pvc/internal/wire"
	"github.com/pvc-project/pvc/security/name"
	"github.com/pvc-project/pvc/security/signed"
)

// Sentinel errors.
var (
	ErrFormat       = errors.New("malformed policy")
	ErrSyntax       = errors.New("policy syntax error")
	ErrWrongSigner  = errors.New("policy signed by another master")
	ErrBadSignature = errors.New("policy signature invalid (tampered with)")
	ErrOtherCluster = errors.New("policy of another cluster")
	ErrRollback     = errors.New("policy not newer than the one in force")
)

// Limits.
const (
	MaxRules = 4096
	MaxPorts = 64 // ranges per rule
)

const bodyFormat = 1

// Action is what a rule does with a flow.
type Action uint8

// Actions.
const (
	Deny  Action = 0
	Allow Action = 1
)

func (a Action) String() string {
	if a == Allow {
		return "allow"
	}
	return "deny"
}

// Proto is an IP protocol number; ProtoAny matches every protocol.
type Proto uint8

// Protocols a rule can name.
const (
	ProtoAny  Proto = 0
	ProtoICMP Proto = 1
	ProtoTCP  Proto = 6
	ProtoUDP  Proto = 17
)

func (p Proto) String() string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return strconv.Itoa(int(p))
}

func (p Proto) valid() bool {
	return p == ProtoAny || p == ProtoICMP || p == ProtoTCP || p == ProtoUDP
}

// hasPorts reports whether a flow of protocol p has ports.
func (p Proto) hasPorts() bool { return p == ProtoTCP || p == ProtoUDP }

// SelKind is what a selector names.
type SelKind uint8

// Selector kinds.
const (
	SelAny   SelKind = 0
	SelGroup SelKind = 1
	SelPeer  SelKind = 2
)

// Selector names the peers on one side of a rule.
type Selector struct {
	Kind SelKind
	Name string // group or peer name; empty for SelAny
}

func (s Selector) String() string {
	switch s.Kind {
	case SelGroup:
		return "group:" + s.Name
	case SelPeer:
		return "peer:" + s.Name
	}
	return "any"
}

func (s Selector) check() error {
	switch s.Kind {
	case SelAny:
		if s.Name != "" {
			return fmt.Errorf("%w: selector any with a name", ErrFormat)
		}
		return nil
	case SelGroup, SelPeer:
		if err := name.Check(s.Name); err != nil {
			return fmt.Errorf("%w: selector: %v", ErrFormat, err)
		}
		return nil
	}
	return fmt.Errorf("%w: selector kind %d", ErrFormat, s.Kind)
}

// match reports whether the selector names a host with this name and
// these groups. It does not allocate.
func (s *Selector) match(peer string, groups []string) bool {
	switch s.Kind {
	case SelAny:
		return true
	case SelPeer:
		return s.Name == peer
	case SelGroup:
		for _, g := range groups {
			if g == s.Name {
				return true
			}
		}
	}
	return false
}

// PortRange is an inclusive range of ports.
type PortRange struct{ Lo, Hi uint16 }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return strconv.Itoa(int(r.Lo)) + "-" + strconv.Itoa(int(r.Hi))
}

// matchPorts reports whether port is in one of the ranges; no ranges
// match every port.
func matchPorts(rs []PortRange, port uint16) bool {
	if len(rs) == 0 {
		return true
	}
	for _, r := range rs {
		if port >= r.Lo && port <= r.Hi {
			return true
		}
	}
	return false
}

// Rule is one rule of the global policy.
type Rule struct {
	Action Action
	From   Selector // the side that opens the flow
	To     Selector // the side that accepts it
	Proto  Proto
	Ports  []PortRange // the accepting side's ports; empty: all (tcp/udp only)
	Line   int         // line in the text source; 0 when decoded from binary
}

func (r *Rule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s from %s to %s", r.Action, r.From, r.To)
	if r.Proto != ProtoAny {
		fmt.Fprintf(&b, " proto %s", r.Proto)
	}
	if len(r.Ports) > 0 {
		b.WriteString(" port ")
		for i, p := range r.Ports {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(p.String())
		}
	}
	return b.String()
}

func (r *Rule) check() error {
	if r.Action != Allow && r.Action != Deny {
		return fmt.Errorf("%w: action %d", ErrFormat, r.Action)
	}
	if err := r.From.check(); err != nil {
		return err
	}
	if err := r.To.check(); err != nil {
		return err
	}
	if !r.Proto.valid() {
		return fmt.Errorf("%w: protocol %d", ErrFormat, r.Proto)
	}
	if len(r.Ports) > 0 && r.Proto == ProtoICMP {
		return fmt.Errorf("%w: icmp has no ports", ErrFormat)
	}
	if len(r.Ports) > MaxPorts {
		return fmt.Errorf("%w: %d port ranges in a rule, at most %d", ErrFormat, len(r.Ports), MaxPorts)
	}
	for _, p := range r.Ports {
		if p.Lo > p.Hi || p.Lo == 0 {
			return fmt.Errorf("%w: port range %d-%d", ErrFormat, p.Lo, p.Hi)
		}
	}
	return nil
}

// Global is the cluster's global policy.
type Global struct {
	Cluster string
	Version uint64
	Default Action // when no rule matches
	Rules   []Rule // first match wins

	obj *signed.Object
}

func (g *Global) validate() error {
	if err := name.Check(g.Cluster); err != nil {
		return fmt.Errorf("%w: cluster: %v", ErrFormat, err)
	}
	return g.validateRules()
}

// validateRules checks everything but the cluster name (a policy parsed
// from text has none until the master signs it).
func (g *Global) validateRules() error {
	if g.Default != Allow && g.Default != Deny {
		return fmt.Errorf("%w: default %d", ErrFormat, g.Default)
	}
	if len(g.Rules) > MaxRules {
		return fmt.Errorf("%w: %d rules, at most %d", ErrFormat, len(g.Rules), MaxRules)
	}
	for i := range g.Rules {
		if err := g.Rules[i].check(); err != nil {
			return fmt.Errorf("rule %d: %w", i+1, err)
		}
	}
	return nil
}

// Sign validates g and signs it with the master key.
func (g *Global) Sign(master ed25519.PrivateKey) error {
	if err := g.validate(); err != nil {
		return fmt.Errorf("sign policy: %w", err)
	}
	var w wire.Writer
	w.U8(bodyFormat)
	w.U8(uint8(g.Default))
	w.U16(uint16(len(g.Rules)))
	for _, r := range g.Rules {
		w.U8(uint8(r.Action))
		for _, s := range [2]Selector{r.From, r.To} {
			w.U8(uint8(s.Kind))
			w.String8(s.Name)
		}
		w.U8(uint8(r.Proto))
		w.U8(uint8(len(r.Ports)))
		for _, p := range r.Ports {
			w.U16(p.Lo)
			w.U16(p.Hi)
		}
	}
	o, err := signed.Sign(signed.KindPolicy, g.Cluster, g.Cluster, g.Version, w.B, master)
	if err != nil {
		return fmt.Errorf("sign policy: %w", err)
	}
	g.obj = o
	return nil
}

// Encode returns the signed encoding. It panics if g was not signed or
// decoded.
func (g *Global) Encode() []byte { return g.obj.Encode() }

// Decode parses a signed global policy strictly. It does not verify it.
func Decode(b []byte) (*Global, error) {
	o, err := signed.DecodeKind(b, signed.KindPolicy)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if o.Subject != o.Cluster {
		return nil, fmt.Errorf("%w: subject %q is not the cluster %q", ErrFormat, o.Subject, o.Cluster)
	}
	g := &Global{Cluster: o.Cluster, Version: o.Version, obj: o}
	r := wire.NewReader(o.Body)
	if f := r.U8(); r.Err() == nil && f != bodyFormat {
		return nil, fmt.Errorf("%w: unknown body format %d", ErrFormat, f)
	}
	g.Default = Action(r.U8())
	n := int(r.U16())
	if n > MaxRules {
		return nil, fmt.Errorf("%w: %d rules", ErrFormat, n)
	}
	for i := 0; i < n && r.Err() == nil; i++ {
		var rule Rule
		rule.Action = Action(r.U8())
		rule.From = Selector{Kind: SelKind(r.U8()), Name: r.String8(name.MaxLen)}
		rule.To = Selector{Kind: SelKind(r.U8()), Name: r.String8(name.MaxLen)}
		rule.Proto = Proto(r.U8())
		np := int(r.U8())
		if np > MaxPorts {
			return nil, fmt.Errorf("%w: %d port ranges", ErrFormat, np)
		}
		for j := 0; j < np && r.Err() == nil; j++ {
			rule.Ports = append(rule.Ports, PortRange{Lo: r.U16(), Hi: r.U16()})
		}
		g.Rules = append(g.Rules, rule)
	}
	if err := r.Done(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if err := g.validate(); err != nil {
		return nil, err
	}
	return g, nil
}

// Verify checks that g was signed by masterPub for cluster.
func (g *Global) Verify(masterPub ed25519.PublicKey, cluster string) error {
	if g.obj == nil {
		return fmt.Errorf("verify policy: %w: not signed", ErrBadSignature)
	}
	if err := g.obj.Verify(masterPub); err != nil {
		if errors.Is(err, signed.ErrWrongSigner) {
			return fmt.Errorf("verify policy v%d: %w", g.Version, ErrWrongSigner)
		}
		return fmt.Errorf("verify policy v%d: %w", g.Version, ErrBadSignature)
	}
	if g.Cluster != cluster {
		return fmt.Errorf("verify policy v%d: %w: %q, want %q", g.Version, ErrOtherCluster, g.Cluster, cluster)
	}
	return nil
}

// Newer returns nil if next may replace cur (cur may be nil): ErrRollback
// if next's version is not higher.
func Newer(cur, next *Global) error {
	if cur != nil && next.Version <= cur.Version {
		return fmt.Errorf("policy v%d: %w (v%d)", next.Version, ErrRollback, cur.Version)
	}
	return nil
}

// Object returns the signed envelope (nil before Sign).
func (g *Global) Object() *signed.Object { return g.obj }
