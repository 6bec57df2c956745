package policy

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// MaxSource is the largest policy text accepted.
const MaxSource = 1 << 20

// ParseGlobal parses the text form of a global policy. Cluster and Version
// are left zero: the master fills them when it signs. The format, one
// statement per line, '#' starting a comment:
//
//	default allow|deny
//	allow|deny from SELECTOR to SELECTOR [proto tcp|udp|icmp|any] [port LIST]
//
// SELECTOR is any, group:NAME or peer:NAME. LIST is ports and ranges
// separated by commas or spaces: "22", "6817-6819", "80,443". Ports apply to
// tcp and udp ("proto any port 53" matches tcp and udp port 53, not icmp).
// Exactly one default line is required. Errors name the line.
func ParseGlobal(src []byte) (*Global, error) {
	if len(src) > MaxSource {
		return nil, fmt.Errorf("%w: source larger than %d bytes", ErrSyntax, MaxSource)
	}
	g := &Global{}
	sawDefault := false
	err := eachLine(src, func(n int, f []string) error {
		switch f[0] {
		case "default":
			if len(f) != 2 {
				return fmt.Errorf("want \"default allow\" or \"default deny\"")
			}
			if sawDefault {
				return fmt.Errorf("second default line")
			}
			a, err := parseAction(f[1])
			if err != nil {
				return err
			}
			g.Default, sawDefault = a, true
			return nil
		case "allow", "deny":
			r, err := parseRule(f)
			if err != nil {
				return err
			}
			r.Line = n
			if len(g.Rules) == MaxRules {
				return fmt.Errorf("more than %d rules", MaxRules)
			}
			g.Rules = append(g.Rules, r)
			return nil
		}
		return fmt.Errorf("unknown statement %q (want default, allow or deny)", f[0])
	})
	if err != nil {
		return nil, err
	}
	if !sawDefault {
		return nil, fmt.Errorf("%w: no \"default allow\" or \"default deny\" line", ErrSyntax)
	}
	return g, nil
}

// eachLine calls fn with the fields of each line that is not blank or a
// comment, and wraps fn's error with the line number and ErrSyntax.
func eachLine(src []byte, fn func(n int, fields []string) error) error {
	sc := bufio.NewScanner(bytes.NewReader(src))
	sc.Buffer(make([]byte, 0, 4096), MaxSource)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if err := fn(n, f); err != nil {
			return fmt.Errorf("line %d: %w: %v", n, ErrSyntax, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: %v", ErrSyntax, err)
	}
	return nil
}

func parseAction(s string) (Action, error) {
	switch s {
	case "allow":
		return Allow, nil
	case "deny":
		return Deny, nil
	}
	return 0, fmt.Errorf("unknown action %q (want allow or deny)", s)
}

func parseRule(f []string) (Rule, error) {
	var r Rule
	r.Action, _ = parseAction(f[0])
	if len(f) < 5 || f[1] != "from" || f[3] != "to" {
		return r, fmt.Errorf("want \"%s from SELECTOR to SELECTOR [proto P] [port LIST]\"", f[0])
	}
	var err error
	if r.From, err = parseSelector(f[2]); err != nil {
		return r, err
	}
	if r.To, err = parseSelector(f[4]); err != nil {
		return r, err
	}
	rest := f[5:]
	if len(rest) > 0 && rest[0] == "proto" {
		if len(rest) < 2 {
			return r, fmt.Errorf("proto needs a value (tcp, udp, icmp or any)")
		}
		if r.Proto, err = parseProto(rest[1]); err != nil {
			return r, err
		}
		rest = rest[2:]
	}
	if len(rest) > 0 && (rest[0] == "port" || rest[0] == "ports") {
		if len(rest) < 2 {
			return r, fmt.Errorf("port needs a list (e.g. 22 or 6817-6819,80)")
		}
		if r.Proto == ProtoICMP {
			return r, fmt.Errorf("icmp has no ports")
		}
		if r.Ports, err = parsePorts(strings.Join(rest[1:], ",")); err != nil {
			return r, err
		}
		rest = nil
	}
	if len(rest) > 0 {
		return r, fmt.Errorf("unexpected %q (want proto or port)", rest[0])
	}
	return r, nil
}

func parseSelector(s string) (Selector, error) {
	if s == "any" {
		return Selector{Kind: SelAny}, nil
	}
	kind, n, ok := strings.Cut(s, ":")
	var sel Selector
	switch {
	case ok && kind == "group":
		sel = Selector{Kind: SelGroup, Name: n}
	case ok && kind == "peer":
		sel = Selector{Kind: SelPeer, Name: n}
	default:
		return sel, fmt.Errorf("unknown selector %q (want any, group:NAME or peer:NAME)", s)
	}
	if err := sel.check(); err != nil {
		return sel, fmt.Errorf("selector %q: %v", s, err)
	}
	return sel, nil
}

func parseProto(s string) (Proto, error) {
	switch s {
	case "any":
		return ProtoAny, nil
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	case "icmp":
		return ProtoICMP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want tcp, udp, icmp or any)", s)
}

// parsePorts parses "22,80,6817-6819" (empty items are skipped).
func parsePorts(s string) ([]PortRange, error) {
	var rs []PortRange
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(item, "-")
		a, err := parsePort(lo)
		if err != nil {
			return nil, err
		}
		b := a
		if isRange {
			if b, err = parsePort(hi); err != nil {
				return nil, err
			}
			if b < a {
				return nil, fmt.Errorf("port range %q is backwards", item)
			}
		}
		if len(rs) == MaxPorts {
			return nil, fmt.Errorf("more than %d port ranges", MaxPorts)
		}
		rs = append(rs, PortRange{a, b})
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("empty port list")
	}
	return rs, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("bad port %q (want 1 to 65535)", s)
	}
	return uint16(n), nil
}

// Text returns g in the text form that ParseGlobal reads.
func (g *Global) Text() string {
	var b strings.Builder
	if g.Cluster != "" {
		fmt.Fprintf(&b, "# cluster %s, version %d\n", g.Cluster, g.Version)
	}
	fmt.Fprintf(&b, "default %s\n", g.Default)
	for i := range g.Rules {
		b.WriteString(g.Rules[i].String())
		b.WriteByte('\n')
	}
	return b.String()
}
