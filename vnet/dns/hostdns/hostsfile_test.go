package hostdns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

const systemHosts = "127.0.0.1\tlocalhost\n::1 localhost ip6-localhost # keep\n\n# site entries\n198.18.0.5 nas\n"

func writeHosts(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // not filtered by umask
		t.Fatal(err)
	}
	return p
}

func readHosts(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func newHF(t *testing.T, p, cluster string) *HostsFile {
	t.Helper()
	h, err := NewHostsFile(p, cluster, cluster+".pvc")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestHostsFileLifecycle(t *testing.T) {
	ctx := t.Context()
	p := writeHosts(t, systemHosts, 0o640)
	h := newHF(t, p, "alpha")

	// Add.
	if err := h.Apply(ctx, hostsA); err != nil {
		t.Fatal(err)
	}
	if got, want := readHosts(t, p), systemHosts+blockA; got != want {
		t.Fatalf("after Apply:\n%s\nwant:\n%s", got, want)
	}
	// Replace: a peer leaves, one joins.
	next := []Host{{"node1", netip.MustParseAddr("240.1.0.1")}, {"node3", netip.MustParseAddr("240.1.0.3")}}
	if err := h.Apply(ctx, next); err != nil {
		t.Fatal(err)
	}
	want := systemHosts + "# BEGIN pvc alpha (managed by pvcd; do not edit)\n" +
		"240.1.0.1 node1.alpha.pvc node1\n240.1.0.3 node3.alpha.pvc node3\n# END pvc alpha\n"
	if got := readHosts(t, p); got != want {
		t.Fatalf("after second Apply:\n%s\nwant:\n%s", got, want)
	}
	// Remove: the file is what it was, mode included.
	if err := h.Undo(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Undo(ctx); err != nil {
		t.Fatalf("second Undo: %v", err)
	}
	if got := readHosts(t, p); got != systemHosts {
		t.Fatalf("after Undo:\n%q\nwant:\n%q", got, systemHosts)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	// No temporary files left behind.
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("directory holds %d files, want 1: %v", len(ents), ents)
	}
}

// A crash leaves the block; the next start (a new HostsFile) replaces it,
// in place, and does so again if started twice (idempotent).
func TestHostsFileCrashRecovery(t *testing.T) {
	ctx := t.Context()
	stale := "# BEGIN pvc alpha (managed by pvcd; do not edit)\n240.1.0.77 gone.alpha.pvc gone\n# END pvc alpha\n"
	p := writeHosts(t, "127.0.0.1 localhost\n"+stale+"198.18.0.5 nas\n", 0o644)
	for range 2 {
		if err := newHF(t, p, "alpha").Apply(ctx, hostsA); err != nil {
			t.Fatal(err)
		}
		if got, want := readHosts(t, p), "127.0.0.1 localhost\n"+blockA+"198.18.0.5 nas\n"; got != want {
			t.Fatalf("after restart:\n%s\nwant:\n%s", got, want)
		}
	}
	// A daemon that stops without peers (Undo after crash) also cleans.
	p2 := writeHosts(t, stale, 0o644)
	if err := newHF(t, p2, "alpha").Undo(ctx); err != nil {
		t.Fatal(err)
	}
	if got := readHosts(t, p2); got != "" {
		t.Fatalf("after Undo of a stale block: %q", got)
	}
}

func TestHostsFileTwoClusters(t *testing.T) {
	ctx := t.Context()
	p := writeHosts(t, systemHosts, 0o644)
	a, b := newHF(t, p, "alpha"), newHF(t, p, "beta")
	hb := []Host{{"node1", netip.MustParseAddr("240.2.0.1")}}
	blockB := "# BEGIN pvc beta (managed by pvcd; do not edit)\n240.2.0.1 node1.beta.pvc node1\n# END pvc beta\n"
	if err := a.Apply(ctx, hostsA); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, hb); err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(ctx, hostsA[:1]); err != nil {
		t.Fatal(err)
	}
	blockA1 := "# BEGIN pvc alpha (managed by pvcd; do not edit)\n240.1.0.2 node2.alpha.pvc node2\n# END pvc alpha\n"
	if got, want := readHosts(t, p), systemHosts+blockA1+blockB; got != want {
		t.Fatalf("two clusters:\n%s\nwant:\n%s", got, want)
	}
	if err := a.Undo(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := readHosts(t, p), systemHosts+blockB; got != want {
		t.Fatalf("after alpha's Undo:\n%s\nwant:\n%s", got, want)
	}
	if err := b.Undo(ctx); err != nil {
		t.Fatal(err)
	}
	if got := readHosts(t, p); got != systemHosts {
		t.Fatalf("after both Undo:\n%s", got)
	}
}

// Two daemons rewriting one file at once lose nothing: the directory lock
// serializes read-modify-rename.
func TestHostsFileConcurrentClusters(t *testing.T) {
	ctx := t.Context()
	p := writeHosts(t, systemHosts, 0o644)
	var wg sync.WaitGroup
	for c := range 4 {
		h := newHF(t, p, fmt.Sprintf("c%d", c))
		wg.Go(func() {
			for i := range 20 {
				hs := []Host{{fmt.Sprintf("n%d", i), netip.AddrFrom4([4]byte{240, byte(c), 0, byte(i)})}}
				if err := h.Apply(ctx, hs); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	f, err := Parse([]byte(readHosts(t, p)))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Clusters(); len(got) != 4 {
		t.Fatalf("clusters %v, want 4", got)
	}
	for c := range 4 {
		hs, _ := f.Block(fmt.Sprintf("c%d", c))
		if len(hs) != 1 || hs[0].Name != "n19" {
			t.Errorf("c%d: %v, want the last write n19", c, hs)
		}
	}
	if !strings.HasPrefix(readHosts(t, p), systemHosts) {
		t.Error("lines outside the blocks changed")
	}
}

func TestHostsFileEdges(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	// A missing file is created 0644 by Apply; Undo of a missing file is fine.
	p := filepath.Join(dir, "hosts")
	if err := newHF(t, filepath.Join(dir, "nonexistent"), "alpha").Undo(ctx); err != nil {
		t.Fatalf("Undo of a missing file: %v", err)
	}
	if err := newHF(t, p, "alpha").Apply(ctx, hostsA); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("new file: %v %v", fi, err)
	}
	// A symlink stays a symlink; its target gets the block.
	link := filepath.Join(dir, "hosts.link")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	if err := newHF(t, link, "alpha").Undo(ctx); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("link replaced: %v %v", fi, err)
	}
	if got := readHosts(t, p); got != "" {
		t.Fatalf("target after Undo: %q", got)
	}
	// A malformed block: the file is left alone and the error says why.
	bad := "127.0.0.1 localhost\n# BEGIN pvc alpha (managed by pvcd; do not edit)\n198.18.0.1 user-line\n"
	pb := writeHosts(t, bad, 0o644)
	if err := newHF(t, pb, "alpha").Apply(ctx, hostsA); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Apply on a malformed file: %v, want ErrMalformed", err)
	}
	if got := readHosts(t, pb); got != bad {
		t.Fatal("malformed file was changed")
	}
	// An ended context changes nothing.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := newHF(t, p, "alpha").Apply(cctx, hostsA); !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply with ended context: %v", err)
	}
	if _, err := NewHostsFile(p, "bad cluster", "x.pvc"); err == nil {
		t.Fatal("bad cluster name accepted")
	}
}
