// Package hostdns puts a cluster's names into the host's resolver, and
// takes them out again, so that unmodified programs resolve NAME.DOMAIN:
//
//   - with systemd-resolved in use (Detect), split DNS: the TUN link gets
//     pvcd's DNS server and the routing domains ~DOMAIN and ~REVERSE-ZONE
//     (Resolved, through resolvectl);
//   - otherwise a managed block in /etc/hosts, delimited by marker lines
//     that name the cluster, rewritten atomically as peers come and go and
//     removed on exit (HostsFile). A block left by a crash is replaced on
//     the next start; blocks of several clusters coexist; lines outside
//     the blocks are never changed.
//
// The hosts-file code is Linux/Unix-only (flock, Stat_t).
package hostdns

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// Integration is one way of putting the names into the host's resolver.
type Integration interface {
	// Apply installs the names, or updates them to hosts. It may be
	// called again whenever the peers change.
	Apply(ctx context.Context, hosts []Host) error
	// Undo removes what Apply installed; doing it twice is no error.
	Undo(ctx context.Context) error
	// Mode says which integration this is: "resolved" or "hosts".
	Mode() string
}

// Config says what to integrate and where.
type Config struct {
	Cluster     string     // cluster name, in the hosts-file markers
	Domain      string     // e.g. "mycluster.pvc"
	ReverseZone string     // e.g. "1.240.in-addr.arpa" (resolved only)
	Link        string     // TUN link name, e.g. "pvc0" (resolved only)
	Server      netip.Addr // pvcd's DNS server address (resolved only)
	HostsPath   string     // zero means DefaultHostsPath
	Runner      Runner     // nil means ExecRunner
	Logger      *slog.Logger
	// Resolved forces the choice when not nil; nil means Detect(DefaultSystem).
	Resolved *bool
}

// New returns the integration for this host: Resolved when
// systemd-resolved is in use, else HostsFile.
func New(cfg Config) (Integration, error) {
	use := false
	if cfg.Resolved != nil {
		use = *cfg.Resolved
	} else {
		use = Detect(DefaultSystem)
	}
	if use {
		domains := []string{cfg.Domain}
		if cfg.ReverseZone != "" {
			domains = append(domains, cfg.ReverseZone)
		}
		return NewResolved(cfg.Link, cfg.Server, domains, cfg.Runner, cfg.Logger), nil
	}
	return NewHostsFile(cfg.HostsPath, cfg.Cluster, cfg.Domain)
}

// System is what Detect looks at; DefaultSystem is the real host.
type System struct {
	ReadFile func(path string) ([]byte, error)
	Stat     func(path string) error
	LookPath func(file string) error
}

// DefaultSystem reads the real file system and PATH.
var DefaultSystem = System{
	ReadFile: os.ReadFile,
	Stat:     func(p string) error { _, err := os.Stat(p); return err },
	LookPath: func(f string) error { _, err := exec.LookPath(f); return err },
}

// Detect reports whether systemd-resolved runs and the host's lookups go
// through it: its runtime directory holds the stub resolv.conf, resolvectl
// is installed, and /etc/resolv.conf points at the stub (127.0.0.53) or
// nsswitch.conf uses nss-resolve. A resolved that runs but that glibc does
// not ask would not make split DNS work, so the hosts file is used then.
func Detect(sys System) bool {
	if sys.Stat("/run/systemd/resolve/stub-resolv.conf") != nil || sys.LookPath("resolvectl") != nil {
		return false
	}
	if b, err := sys.ReadFile("/etc/resolv.conf"); err == nil {
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "nameserver" && f[1] == "127.0.0.53" {
				return true
			}
		}
	}
	if b, err := sys.ReadFile("/etc/nsswitch.conf"); err == nil {
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) > 0 && f[0] == "hosts:" {
				for _, s := range f[1:] {
					if s == "resolve" || strings.HasPrefix(s, "resolve[") {
						return true
					}
				}
			}
		}
	}
	return false
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
