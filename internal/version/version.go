// Package version reports the build's version for --version output.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is the release version; set at link time with
// -ldflags "-X github.com/pvc-project/pvc/internal/version.Version=…".
var Version = "0.1.0-dev"

// String returns "PROG VERSION (commit, go version)".
func String(prog string) string {
	commit := "unknown commit"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				commit = s.Value[:12]
			}
		}
	}
	return fmt.Sprintf("%s %s (%s, %s)", prog, Version, commit, runtime.Version())
}
