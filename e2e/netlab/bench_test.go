package netlab

import (
	"context"
	"testing"
	"time"
)

// BenchmarkBuild8Sites builds and tears down a lab with one site of each
// of the 8 kinds and two Internet hosts (19 namespaces, miniupnpd and
// stund included), and reports the two phases separately.
func BenchmarkBuild8Sites(b *testing.B) {
	spec := everyKind()
	spec.Sites = spec.Sites[:len(Kinds)] // the 8 kinds, no extra
	RequireRoot(b)
	RequireTools(b, spec.Tools()...)
	var build, teardown time.Duration
	for b.Loop() {
		t0 := time.Now()
		l, err := Build(context.Background(), spec, Options{})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := l.Close(); err != nil {
			b.Fatal(err)
		}
		build += t1.Sub(t0)
		teardown += time.Since(t1)
	}
	b.ReportMetric(float64(build.Milliseconds())/float64(b.N), "build-ms/op")
	b.ReportMetric(float64(teardown.Milliseconds())/float64(b.N), "teardown-ms/op")
}
