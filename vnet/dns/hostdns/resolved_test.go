package hostdns

import (
	"context"
	"errors"
	"io/fs"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// recRunner records commands; fail makes the commands whose text starts
// with it fail.
type recRunner struct {
	cmds []string
	fail string
}

func (r *recRunner) Run(_ context.Context, name string, args ...string) error {
	c := strings.Join(append([]string{name}, args...), " ")
	r.cmds = append(r.cmds, c)
	if r.fail != "" && strings.HasPrefix(c, r.fail) {
		return errors.New("exit status 1")
	}
	return nil
}

func TestResolvedCommands(t *testing.T) {
	ctx := t.Context()
	run := &recRunner{}
	yes := true
	integ, err := New(Config{
		Cluster: "alpha", Domain: "alpha.pvc", ReverseZone: "1.240.in-addr.arpa.",
		Link: "pvc0", Server: netip.MustParseAddr("240.1.0.7"), Runner: run, Resolved: &yes,
	})
	if err != nil {
		t.Fatal(err)
	}
	if integ.Mode() != "resolved" {
		t.Fatalf("mode %s", integ.Mode())
	}
	if err := integ.Apply(ctx, hostsA); err != nil {
		t.Fatal(err)
	}
	if err := integ.Apply(ctx, hostsA[:1]); err != nil { // peers changed: nothing to run
		t.Fatal(err)
	}
	if err := integ.Undo(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"resolvectl dns pvc0 240.1.0.7",
		"resolvectl domain pvc0 ~alpha.pvc ~1.240.in-addr.arpa",
		"resolvectl default-route pvc0 false",
		"resolvectl revert pvc0",
	}
	if !reflect.DeepEqual(run.cmds, want) {
		t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(run.cmds, "\n"), strings.Join(want, "\n"))
	}
}

func TestResolvedFailures(t *testing.T) {
	ctx := t.Context()
	// A failed domain step reverts the DNS server it set.
	run := &recRunner{fail: "resolvectl domain"}
	r := NewResolved("pvc0", netip.MustParseAddr("240.1.0.7"), []string{"alpha.pvc"}, run, nil)
	if err := r.Apply(ctx, nil); err == nil {
		t.Fatal("no error")
	}
	if last := run.cmds[len(run.cmds)-1]; last != "resolvectl revert pvc0" {
		t.Errorf("last command %q, want the revert", last)
	}
	// An old resolvectl without default-route still works.
	run = &recRunner{fail: "resolvectl default-route"}
	r = NewResolved("pvc0", netip.MustParseAddr("240.1.0.7"), []string{"alpha.pvc"}, run, nil)
	if err := r.Apply(ctx, nil); err != nil {
		t.Fatalf("default-route failure is fatal: %v", err)
	}
}

func TestDetect(t *testing.T) {
	sys := func(files map[string]string, resolvectl bool) System {
		return System{
			ReadFile: func(p string) ([]byte, error) {
				if s, ok := files[p]; ok {
					return []byte(s), nil
				}
				return nil, fs.ErrNotExist
			},
			Stat: func(p string) error {
				if _, ok := files[p]; ok {
					return nil
				}
				return fs.ErrNotExist
			},
			LookPath: func(string) error {
				if resolvectl {
					return nil
				}
				return fs.ErrNotExist
			},
		}
	}
	const stub = "/run/systemd/resolve/stub-resolv.conf"
	tests := []struct {
		name       string
		files      map[string]string
		resolvectl bool
		want       bool
	}{
		{"this machine: plain resolv.conf", map[string]string{"/etc/resolv.conf": "nameserver 198.18.255.53\n"}, false, false},
		{"busctl alone is not resolved", map[string]string{"/etc/resolv.conf": "nameserver 198.18.255.53\n"}, true, false},
		{"stub in use", map[string]string{stub: "", "/etc/resolv.conf": "# stub\nnameserver 127.0.0.53\noptions edns0\n"}, true, true},
		{"resolved runs but resolv.conf bypasses it", map[string]string{stub: "", "/etc/resolv.conf": "nameserver 192.0.2.1\n"}, true, false},
		{"nss-resolve", map[string]string{stub: "", "/etc/resolv.conf": "nameserver 192.0.2.1\n",
			"/etc/nsswitch.conf": "passwd: files\nhosts: mymachines resolve [!UNAVAIL=return] files dns\n"}, true, true},
		{"stub but no resolvectl", map[string]string{stub: "", "/etc/resolv.conf": "nameserver 127.0.0.53\n"}, false, false},
	}
	for _, tt := range tests {
		if got := Detect(sys(tt.files, tt.resolvectl)); got != tt.want {
			t.Errorf("%s: Detect = %v, want %v", tt.name, got, tt.want)
		}
	}
	// On this machine (no systemd-resolved) New picks the hosts file.
	if !Detect(DefaultSystem) {
		integ, err := New(Config{Cluster: "alpha", Domain: "alpha.pvc", HostsPath: t.TempDir() + "/hosts"})
		if err != nil {
			t.Fatal(err)
		}
		if integ.Mode() != "hosts" {
			t.Errorf("mode %s, want hosts", integ.Mode())
		}
	}
}
