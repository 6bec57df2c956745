package hostdns

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
)

// Runner runs a command; the error carries its output. ExecRunner runs
// real commands; tests record them.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) error
}

// ExecRunner runs commands with os/exec.
type ExecRunner struct{}

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Resolved configures systemd-resolved split DNS for the cluster: the TUN
// link gets the cluster's DNS server (pvcd's own, on its virtual address)
// and the routing-only domains ~DOMAIN and ~REVERSE-ZONE, so resolved sends
// only the cluster's names there and everything else where it did before.
// Undo is `resolvectl revert LINK`; deleting the link also drops the
// settings, so a crash leaves nothing once the TUN is gone.
//
// This path is tested only against a recorded Runner: the development
// machine has no systemd-resolved.
type Resolved struct {
	link    string
	server  netip.Addr
	domains []string
	run     Runner
	log     *slog.Logger

	mu      sync.Mutex
	applied bool // guarded by mu
}

// NewResolved returns the integration for link (e.g. "pvc0") with the DNS
// server at server and the given routing domains ("mycluster.pvc",
// "1.240.in-addr.arpa"; without '~'). run nil means ExecRunner; log nil
// discards.
func NewResolved(link string, server netip.Addr, domains []string, run Runner, log *slog.Logger) *Resolved {
	if run == nil {
		run = ExecRunner{}
	}
	if log == nil {
		log = discardLogger()
	}
	return &Resolved{link: link, server: server, domains: domains, run: run, log: log}
}

// Mode implements Integration.
func (r *Resolved) Mode() string { return "resolved" }

// Apply implements Integration. The host list is not used (resolved asks
// pvcd's server); the link is configured on the first call only.
func (r *Resolved) Apply(ctx context.Context, _ []Host) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.applied {
		return nil
	}
	if err := r.run.Run(ctx, "resolvectl", "dns", r.link, r.server.String()); err != nil {
		return fmt.Errorf("resolved: %w", err)
	}
	args := []string{"domain", r.link}
	for _, d := range r.domains {
		args = append(args, "~"+strings.TrimSuffix(d, "."))
	}
	if err := r.run.Run(ctx, "resolvectl", args...); err != nil {
		_ = r.run.Run(ctx, "resolvectl", "revert", r.link)
		return fmt.Errorf("resolved: %w", err)
	}
	// Never the default route for other names, whatever the link's
	// other settings say. Older resolvectl lack the verb: not fatal,
	// routing-only domains already keep other names away.
	if err := r.run.Run(ctx, "resolvectl", "default-route", r.link, "false"); err != nil {
		r.log.Warn("resolvectl default-route failed; continuing", "link", r.link, "err", err)
	}
	r.applied = true
	return nil
}

// Undo implements Integration.
func (r *Resolved) Undo(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied = false
	if err := r.run.Run(ctx, "resolvectl", "revert", r.link); err != nil {
		return fmt.Errorf("resolved: %w", err)
	}
	return nil
}
