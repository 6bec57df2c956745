package policy

import (
	"fmt"
	"net/netip"
)

// Direction says which side opened a flow.
type Direction uint8

// Directions.
const (
	Outbound Direction = iota // this host opened the flow to the peer
	Inbound                   // the peer opened the flow to this host
)

func (d Direction) String() string {
	if d == Inbound {
		return "inbound"
	}
	return "outbound"
}

// Flow is the first packet of a new flow as the data plane sees it.
type Flow struct {
	Proto      Proto // IP protocol number (6 tcp, 17 udp, 1 icmp, others)
	Dir        Direction
	LocalIP    netip.Addr // this host's virtual IP
	RemoteIP   netip.Addr // the peer's virtual IP (the data plane checked it is the certified one)
	LocalPort  uint16     // 0 for protocols without ports
	RemotePort uint16
}

// Peer is the other side of a flow: its identity from its verified
// certificate and its underlay (real, public) address.
type Peer struct {
	Name     string
	Groups   []string
	Underlay netip.Addr // invalid if unknown (e.g. reached through a relay): then outside
}

// Identity is this host's own name and groups, from its certificate.
type Identity struct {
	Name   string
	Groups []string
}

// Layer names the policy that decided.
type Layer uint8

// Layers.
const (
	LayerLocal  Layer = 1
	LayerGlobal Layer = 2
)

func (l Layer) String() string {
	if l == LayerLocal {
		return "local"
	}
	return "global"
}

// Local rules, as Decision.Rule values when Layer is LayerLocal.
const (
	LocalOutside = 0 // the peer is outside the domain and the direction is denied
	LocalInbound = 1 // no inbound line lets the peer reach this local port
)

// Decision is the outcome for one flow. When the flow is denied, Layer and
// Rule name the policy and rule that denied it; when it is allowed (both
// policies allowed), the global rule that allowed it. Rule is an index into
// Global.Rules, -1 for the global default (or no global policy), or a
// Local* constant.
type Decision struct {
	Allow bool
	Layer Layer
	Rule  int
}

// crule is a global rule reduced to its peer side for one direction.
type crule struct {
	index int
	peer  Selector
	proto Proto
	ports []PortRange
	allow bool
}

// Engine decides flows for one host. It is immutable after NewEngine and
// safe for concurrent use; replace it when a policy changes.
type Engine struct {
	global     *Global
	local      Local
	out, in    []crule // global rules whose own side names this host
	defAllow   bool
	restrictIn bool
}

// NewEngine compiles the policies for this host. global nil means that no
// global policy is in force: the global layer then allows every flow (Rule
// -1). local nil is a local policy that allows everything.
func NewEngine(global *Global, local *Local, self Identity) (*Engine, error) {
	e := &Engine{global: global, defAllow: true}
	if local != nil {
		e.local = *local
	} else {
		e.local = Local{OutsideInbound: Allow, OutsideOutbound: Allow}
	}
	e.restrictIn = e.local.RestrictInbound
	if global != nil {
		if err := global.validateRules(); err != nil {
			return nil, fmt.Errorf("compile policy: %w", err)
		}
		e.defAllow = global.Default == Allow
		for i := range global.Rules {
			r := &global.Rules[i]
			if r.From.match(self.Name, self.Groups) {
				e.out = append(e.out, crule{i, r.To, r.Proto, r.Ports, r.Action == Allow})
			}
			if r.To.match(self.Name, self.Groups) {
				e.in = append(e.in, crule{i, r.From, r.Proto, r.Ports, r.Action == Allow})
			}
		}
	}
	return e, nil
}

// Decide returns the decision for a new flow with peer p. It does not
// allocate.
func (e *Engine) Decide(f *Flow, p *Peer) Decision {
	// Local layer first: it is the cheaper one.
	inside := e.local.Inside(p.Underlay)
	rules, port := e.out, f.RemotePort
	if f.Dir == Inbound {
		rules, port = e.in, f.LocalPort
		if !inside && e.local.OutsideInbound == Deny {
			return Decision{Layer: LayerLocal, Rule: LocalOutside}
		}
		if e.restrictIn && !e.inboundAllowed(f.Proto, port) {
			return Decision{Layer: LayerLocal, Rule: LocalInbound}
		}
	} else if !inside && e.local.OutsideOutbound == Deny {
		return Decision{Layer: LayerLocal, Rule: LocalOutside}
	}
	for i := range rules {
		r := &rules[i]
		if r.proto != ProtoAny && r.proto != f.Proto {
			continue
		}
		if len(r.ports) > 0 && (!f.Proto.hasPorts() || !matchPorts(r.ports, port)) {
			continue
		}
		if !r.peer.match(p.Name, p.Groups) {
			continue
		}
		return Decision{Allow: r.allow, Layer: LayerGlobal, Rule: r.index}
	}
	return Decision{Allow: e.defAllow, Layer: LayerGlobal, Rule: -1}
}

func (e *Engine) inboundAllowed(proto Proto, port uint16) bool {
	for i := range e.local.Inbound {
		r := &e.local.Inbound[i]
		if r.Proto != ProtoAny && r.Proto != proto {
			continue
		}
		if len(r.Ports) > 0 && (!proto.hasPorts() || !matchPorts(r.Ports, port)) {
			continue
		}
		return true
	}
	return false
}

// Explain describes a decision for logs and `pvcd policy` output, e.g.
// "allow by global rule 3 (line 7): allow from group:a to any proto tcp".
func (e *Engine) Explain(d Decision) string {
	verdict := "deny"
	if d.Allow {
		verdict = "allow"
	}
	if d.Layer == LayerLocal {
		if d.Rule == LocalOutside {
			return verdict + " by local policy: peer outside the domain"
		}
		return verdict + " by local policy: local port not listed in an inbound line"
	}
	if d.Rule < 0 || e.global == nil || d.Rule >= len(e.global.Rules) {
		return verdict + " by the global default"
	}
	r := &e.global.Rules[d.Rule]
	if r.Line > 0 {
		return fmt.Sprintf("%s by global rule %d (line %d): %s", verdict, d.Rule+1, r.Line, r)
	}
	return fmt.Sprintf("%s by global rule %d: %s", verdict, d.Rule+1, r)
}
