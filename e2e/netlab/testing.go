package netlab

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

// RequireRoot skips the test unless it runs as root, which creating
// network namespaces needs.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to build the network lab: run `make test` as root")
	}
}

// RequireTools skips the test unless every named program is installed.
func RequireTools(tb testing.TB, tools ...string) {
	tb.Helper()
	for _, t := range tools {
		if _, err := lookPath(t); err != nil {
			tb.Skipf("needs %s (install it with scripts/install-deps.sh)", t)
		}
	}
}

// New builds a lab for a test and tears it down when the test ends, also
// when it fails. It skips the test without root or a needed tool.
func New(tb testing.TB, spec Spec) *Lab {
	tb.Helper()
	RequireRoot(tb)
	RequireTools(tb, spec.Tools()...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Build(ctx, spec, Options{Logf: tb.Logf})
	if errors.Is(err, ErrMissingTool) {
		tb.Skip(err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("lab teardown: %v", err)
		}
	})
	return l
}
