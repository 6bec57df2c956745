package server

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/signed"
)

// metrics are the broker's counters, served as Prometheus text.
type metrics struct {
	sessions     [proto.RoleReplica + 1]atomic.Int64
	relayBytes   atomic.Uint64
	relayDrops   atomic.Uint64 // rate limit, full queue, bad sender
	relayRefused atomic.Uint64 // revoked or unknown sender
	signals      atomic.Uint64
	signalDrops  atomic.Uint64
	queueDrops   atomic.Uint64
	overflows    atomic.Uint64
	stored       atomic.Uint64
	enrolls      atomic.Uint64
	stunRequests atomic.Uint64

	mu           sync.Mutex
	refusedByWhy map[string]uint64
}

func newMetrics() *metrics { return &metrics{refusedByWhy: map[string]uint64{}} }

func (m *metrics) refused(reason string) {
	m.mu.Lock()
	m.refusedByWhy[reason]++
	m.mu.Unlock()
}

func (m *metrics) dropped(msg proto.Message) {
	if msg.Type() == proto.TypeRelay {
		m.relayDrops.Add(1)
	} else {
		m.signalDrops.Add(1)
	}
}

// serveMetrics writes the Prometheus text exposition format.
func (s *Server) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	m := s.metrics
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	p := func(name, help, typ string) { fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ) }
	p("pvc_broker_sessions", "Authenticated sessions by role.", "gauge")
	for r := proto.RolePeer; r <= proto.RoleReplica; r++ {
		fmt.Fprintf(w, "pvc_broker_sessions{role=%q} %d\n", r.String(), m.sessions[r].Load())
	}
	p("pvc_broker_relay_bytes_total", "Relayed WireGuard bytes.", "counter")
	fmt.Fprintf(w, "pvc_broker_relay_bytes_total %d\n", m.relayBytes.Load())
	p("pvc_broker_relay_drops_total", "Relayed datagrams dropped (rate limit, full queue, unreachable, revoked).", "counter")
	fmt.Fprintf(w, "pvc_broker_relay_drops_total{reason=\"drop\"} %d\n", m.relayDrops.Load())
	fmt.Fprintf(w, "pvc_broker_relay_drops_total{reason=\"refused\"} %d\n", m.relayRefused.Load())
	p("pvc_broker_signals_total", "Signalling messages forwarded.", "counter")
	fmt.Fprintf(w, "pvc_broker_signals_total %d\n", m.signals.Load())
	p("pvc_broker_signal_drops_total", "Signalling messages dropped (forged sender, full queue, unreachable).", "counter")
	fmt.Fprintf(w, "pvc_broker_signal_drops_total %d\n", m.signalDrops.Load())
	p("pvc_broker_queue_overflows_total", "Sessions closed because their outbound queue overflowed.", "counter")
	fmt.Fprintf(w, "pvc_broker_queue_overflows_total %d\n", m.overflows.Load())
	p("pvc_broker_enrollments_total", "Enrollment requests forwarded.", "counter")
	fmt.Fprintf(w, "pvc_broker_enrollments_total %d\n", m.enrolls.Load())
	p("pvc_broker_stun_requests_total", "STUN binding requests answered.", "counter")
	fmt.Fprintf(w, "pvc_broker_stun_requests_total %d\n", m.stunRequests.Load())

	p("pvc_broker_registry_objects", "Objects held in the registry by kind.", "gauge")
	counts := map[string]int{}
	s.mu.Lock()
	for _, c := range s.clusters {
		for k := range c.objs {
			counts[k.kind.String()]++
		}
	}
	s.mu.Unlock()
	for k := signed.KindCert; k.Valid(); k++ {
		if k != signed.KindToken && k != signed.KindEnroll {
			fmt.Fprintf(w, "pvc_broker_registry_objects{kind=%q} %d\n", k.String(), counts[k.String()])
		}
	}
	p("pvc_broker_refused_sessions_total", "Sessions refused by reason.", "counter")
	m.mu.Lock()
	reasons := make([]string, 0, len(m.refusedByWhy))
	for r := range m.refusedByWhy {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	vals := make([]uint64, len(reasons))
	for i, r := range reasons {
		vals[i] = m.refusedByWhy[r]
	}
	m.mu.Unlock()
	for i, r := range reasons {
		fmt.Fprintf(w, "pvc_broker_refused_sessions_total{reason=%q} %d\n", r, vals[i])
	}
	_ = slices.Clip(reasons)
}
