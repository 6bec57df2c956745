package control

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

type fakeBackend struct{ downs atomic.Int32 }

func (f *fakeBackend) Status() Status {
	return Status{Cluster: "lab", Name: "n1", VirtualIP: netip.MustParseAddr("240.1.0.1"), Peers: 2}
}

func (f *fakeBackend) Peers() []Peer {
	return []Peer{{Name: "n2", VirtualIP: netip.MustParseAddr("240.1.0.2"), Path: "direct", Remote: "203.0.113.7:51820", BytesIn: 10}}
}

func (f *fakeBackend) Ping(ctx context.Context, peer string) (PingResult, error) {
	if peer != "n2" {
		return PingResult{}, fmt.Errorf("ping %s: %w", peer, ErrUnknownPeer)
	}
	return PingResult{Peer: "n2", Path: "direct", RTT: 3 * time.Millisecond}, nil
}

func (f *fakeBackend) Down() { f.downs.Add(1) }

func TestControlAPI(t *testing.T) {
	before := runtime.NumGoroutine()
	dir := t.TempDir()
	b := &fakeBackend{}
	srv, err := Listen(dir, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	fi, err := os.Stat(srv.Path())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if _, err := Listen(dir, b, nil); err == nil || !strings.Contains(err.Error(), "another pvcd is running") {
		t.Errorf("second daemon on the same state dir: %v", err)
	}
	c := NewClient(dir)
	st, err := c.Status(ctx)
	if err != nil || st.Name != "n1" || st.VirtualIP.String() != "240.1.0.1" {
		t.Errorf("status: %+v, %v", st, err)
	}
	peers, err := c.Peers(ctx)
	if err != nil || len(peers) != 1 || peers[0].Path != "direct" || peers[0].BytesIn != 10 {
		t.Errorf("peers: %+v, %v", peers, err)
	}
	if r, err := c.Ping(ctx, "n2"); err != nil || r.RTT != 3*time.Millisecond {
		t.Errorf("ping n2: %+v, %v", r, err)
	}
	if _, err := c.Ping(ctx, "nobody"); err == nil || !strings.Contains(err.Error(), "unknown peer") {
		t.Errorf("ping nobody: %v", err)
	}
	if err := c.Down(ctx); err != nil || b.downs.Load() != 1 {
		t.Errorf("down: %v, %d calls", err, b.downs.Load())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
	if _, err := os.Stat(srv.Path()); !os.IsNotExist(err) {
		t.Errorf("socket left after Run: %v", err)
	}
	if _, err := c.Status(context.Background()); !errors.Is(err, ErrNotRunning) {
		t.Errorf("status with no daemon: %v, want ErrNotRunning", err)
	}
	c.http.CloseIdleConnections()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines before, %d after", before, n)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	dir := t.TempDir()
	// A crashed daemon leaves its socket file behind.
	if err := os.WriteFile(SocketPath(dir), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := Listen(dir, &fakeBackend{}, nil)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = srv.Run(ctx)
}
