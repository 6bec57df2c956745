package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/security/keys"
)

// run runs pvcd with args and returns the exit status, stdout and stderr.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := program().Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// mustRun runs pvcd and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := run(t, args...)
	if code != 0 {
		t.Fatalf("pvcd %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func TestSecurityHappyPath(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "lab.key")
	bundleFile := filepath.Join(dir, "lab.cluster")
	out := mustRun(t, "cluster", "init", "lab", "--broker", "203.0.113.10:7000=AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
		"--broker", "broker.example.org:7000", "--subnet", "240.7.0.0/16", "--out", dir)
	if want := "created cluster lab: subnet 240.7.0.0/16, domain lab.pvc, 2 broker(s), 1 pinned"; !strings.Contains(out, want) {
		t.Errorf("cluster init said %q, want %q", out, want)
	}
	if n := strings.Count(out, "\n"); n > 2 {
		t.Errorf("cluster init printed %d lines", n)
	}
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("master key: %v %v", st, err)
	}
	// A second cluster in the same dir picks a subnet that does not overlap.
	out = mustRun(t, "cluster", "init", "lab2", "--broker", "203.0.113.10:7000", "--out", dir)
	if strings.Contains(out, "240.7.0.0/16") {
		t.Errorf("second cluster took the first one's subnet: %s", out)
	}

	code, tok, errs := run(t, "token", "--master-key", key, "--uses", "2", "--ttl", "1h", "--name-pattern", "node-*", "--groups", "workers,gpu")
	tok = strings.TrimSpace(tok)
	if code != 0 || !strings.HasPrefix(tok, "pvc1-") || strings.Contains(tok, "\n") {
		t.Fatalf("token: exit %d, %q, %s", code, tok, errs)
	}
	if !strings.Contains(errs, "2 use(s)") || !strings.Contains(errs, "groups gpu,workers") {
		t.Errorf("token summary %q", errs)
	}

	host := filepath.Join(dir, "host1")
	out = mustRun(t, "keygen", "--state-dir", host, "--token", tok, "--name", "node-1")
	if !strings.Contains(out, "created keys in") || !strings.Contains(out, "enrollment request for node-1") {
		t.Errorf("keygen said %q", out)
	}
	for _, f := range []string{"wg.key", "sign.key"} {
		if _, err := keys.ReadPrivateFile(filepath.Join(host, f)); err != nil {
			t.Error(err)
		}
	}
	if out := mustRun(t, "keygen", "--state-dir", host); !strings.Contains(out, "using existing keys") {
		t.Errorf("second keygen said %q", out)
	}

	certFile := filepath.Join(dir, "node-1.cert")
	out = mustRun(t, "cert", "sign", "--master-key", key, "--request", filepath.Join(host, "enroll.req"))
	if !strings.Contains(out, "signed certificate for node-1: 240.7.0.1, serial 1, groups gpu,workers") || !strings.Contains(out, certFile) {
		t.Errorf("cert sign said %q", out)
	}
	out = mustRun(t, "cert", "show", certFile, "--bundle", bundleFile)
	if !strings.Contains(out, "certificate node-1.lab serial 1") || !strings.Contains(out, "verified     yes") {
		t.Errorf("cert show said %q", out)
	}
	var j certJSON
	if err := json.Unmarshal([]byte(mustRun(t, "cert", "show", "--json", certFile, "--bundle", bundleFile)), &j); err != nil {
		t.Fatal(err)
	}
	if j.Name != "node-1" || j.IP != "240.7.0.1" || j.Verified == nil || !*j.Verified || len(j.Groups) != 2 {
		t.Errorf("cert show --json: %+v", j)
	}

	// Admission by hand of a second host.
	wg, _ := keys.NewWG()
	sk, _ := keys.NewSigning()
	out = mustRun(t, "cert", "sign", "--master-key", key, "--name", "head", "--wg-pub", wg.Public().Hex(),
		"--sign-pub", keys.FormatPublic(sk.Public().(ed25519.PublicKey)), "--groups", "head", "--ttl", "48h", "--out", filepath.Join(dir, "h.cert"))
	if !strings.Contains(out, "signed certificate for head: 240.7.0.2, serial 2, groups head") {
		t.Errorf("cert sign by hand said %q", out)
	}

	out = mustRun(t, "revoke", "--master-key", key, "node-1")
	if !strings.Contains(out, "revoked node-1 (serial 1); revocation list v2") {
		t.Errorf("revoke said %q", out)
	}
	code, out, errs = run(t, "cert", "show", certFile, "--bundle", bundleFile, "--revocation", filepath.Join(dir, "lab.revocation"))
	if code != cli.ExitFailure || !strings.Contains(out, "verified     NO") || !strings.Contains(errs, "certificate revoked") {
		t.Errorf("cert show of a revoked cert: exit %d, %q, %q", code, out, errs)
	}

	src := filepath.Join(dir, "policy.txt")
	os.WriteFile(src, []byte("default deny\nallow from group:workers to group:head proto tcp port 6817-6819\nallow from any to any proto icmp\n"), 0o644)
	out = mustRun(t, "policy", "check", src)
	if !strings.Contains(out, "global policy source OK: 2 rule(s), default deny") {
		t.Errorf("policy check said %q", out)
	}
	out = mustRun(t, "policy", "sign", "--master-key", key, src)
	if !strings.Contains(out, "signed global policy v2 for cluster lab: 2 rule(s), default deny") {
		t.Errorf("policy sign said %q", out)
	}
	out = mustRun(t, "policy", "check", filepath.Join(dir, "lab.policy"), "--bundle", bundleFile, "--verbose")
	if !strings.Contains(out, "signed global policy v2 of cluster lab, signature verified OK") || !strings.Contains(out, "allow from any to any proto icmp") {
		t.Errorf("policy check (signed) said %q", out)
	}
	local := filepath.Join(dir, "local.txt")
	os.WriteFile(local, []byte("domain 192.0.2.0/24\noutside inbound deny\ninbound tcp 22\n"), 0o644)
	out = mustRun(t, "policy", "check", "--local", local)
	if !strings.Contains(out, "local policy OK: 1 domain network(s); outside peers: inbound deny, outbound allow; 1 inbound line(s)") {
		t.Errorf("policy check --local said %q", out)
	}

	// The token had 2 uses: node-1 used one; node-2 takes the second;
	// node-3 is refused (exit 1: the work was refused, the input was fine).
	for i, n := range []string{"node-2", "node-3"} {
		h := filepath.Join(dir, n)
		mustRun(t, "keygen", "--state-dir", h, "--token", tok, "--name", n)
		code, _, errs := run(t, "cert", "sign", "--master-key", key, "--request", filepath.Join(h, "enroll.req"))
		if i == 0 && code != 0 {
			t.Errorf("node-2: exit %d %s", code, errs)
		}
		if i == 1 && (code != cli.ExitFailure || !strings.Contains(errs, "enrollment token used up")) {
			t.Errorf("node-3: exit %d %q, want 1 and used up", code, errs)
		}
	}
}

func TestSecurityBadInput(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, "cluster", "init", "lab", "--broker", "203.0.113.10:7000", "--subnet", "240.7.0.0/16", "--out", dir)
	key := filepath.Join(dir, "lab.key")
	loose := filepath.Join(dir, "loose.key")
	b, _ := os.ReadFile(key)
	os.WriteFile(loose, b, 0o644)
	os.Chmod(loose, 0o640)
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("not a pvc file\n"), 0o600)
	badPolicy := filepath.Join(dir, "bad.txt")
	os.WriteFile(badPolicy, []byte("default deny\n\nallow from everyone to any\n"), 0o644)
	req := filepath.Join(dir, "h", "enroll.req")
	code, tok, _ := run(t, "token", "--master-key", key)
	if code != 0 {
		t.Fatal("token failed")
	}
	mustRun(t, "keygen", "--state-dir", filepath.Join(dir, "h"), "--token", strings.TrimSpace(tok), "--name", "h")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cluster"}, "cluster: missing subcommand (init)"},
		{[]string{"cluster", "create"}, `unknown subcommand "create"`},
		{[]string{"cluster", "init", "x", "--broker", "203.0.113.1:7000"}, "--out DIR is required"},
		{[]string{"cluster", "init", "x", "--out", dir}, "at least one --broker HOST:PORT is required"},
		{[]string{"cluster", "init", "--broker", "203.0.113.1:7000", "--out", dir}, "needs exactly one NAME"},
		{[]string{"cluster", "init", "Bad_Name", "--broker", "203.0.113.1:7000", "--out", dir}, "cluster name: bad name"},
		{[]string{"cluster", "init", "x", "--broker", "203.0.113.1", "--out", dir}, `broker "203.0.113.1": want HOST:PORT`},
		{[]string{"cluster", "init", "x", "--broker", "h:1=zz", "--out", dir}, "--broker: broker h:1: signing public key: bad key"},
		{[]string{"cluster", "init", "x", "--broker", "h:1", "--subnet", "198.18.0.0/16", "--out", dir}, "subnet 198.18.0.0/16 is not inside 240.0.0.0/4"},
		{[]string{"cluster", "init", "x", "--broker", "h:1", "--subnet", "240.0.0.0/3", "--out", dir}, "--subnet"},
		{[]string{"cluster", "init", "x", "--broker", "h:1", "--subnet", "240.7.1.0/24", "--out", dir}, "overlaps 240.7.0.0/16 of another cluster"},
		{[]string{"cluster", "init", "x", "--broker", "h:1", "--subnet", "nonsense", "--out", dir}, `--subnet "nonsense": want a prefix`},
		{[]string{"cluster", "init", "x", "--broker", "h:1", "--domain", "a..b", "--out", dir}, "--domain"},
		{[]string{"token"}, "--master-key FILE is required"},
		{[]string{"token", "--master-key", filepath.Join(dir, "missing.key")}, "no such file"},
		{[]string{"token", "--master-key", loose}, "mode 0640, want 0600"},
		{[]string{"token", "--master-key", garbage}, "not a valid key file"},
		{[]string{"token", "--master-key", key, "--uses", "0"}, "--uses 0: want 1 to"},
		{[]string{"token", "--master-key", key, "--ttl", "-1h"}, "--ttl -1h0m0s: want a positive duration"},
		{[]string{"token", "--master-key", key, "--name-pattern", "[x"}, "--name-pattern"},
		{[]string{"token", "--master-key", key, "--groups", "Bad"}, "--groups: bad name"},
		{[]string{"token", "--master-key", key, "extra"}, `unexpected argument "extra"`},
		{[]string{"keygen"}, "--state-dir DIR is required"},
		{[]string{"keygen", "--state-dir", dir, "--token", "pvc1-xx"}, "--token and --name go together"},
		{[]string{"keygen", "--state-dir", dir, "--token", "pvc1-xx", "--name", "a"}, "--token: malformed enrollment token"},
		{[]string{"keygen", "--state-dir", dir, "--token", "x", "--name", "A"}, "--name: bad name"},
		{[]string{"cert"}, "cert: missing subcommand (show, sign)"},
		{[]string{"cert", "sign", "--master-key", key}, "give --request FILE, or --name, --wg-pub and --sign-pub"},
		{[]string{"cert", "sign", "--master-key", key, "--request", req, "--name", "a"}, "not both"},
		{[]string{"cert", "sign", "--master-key", key, "--request", req, "--groups", "a"}, "--groups and --ttl go with admission by hand"},
		{[]string{"cert", "sign", "--master-key", key, "--request", garbage}, "--request " + garbage + ": malformed enrollment request"},
		{[]string{"cert", "sign", "--master-key", key, "--request", filepath.Join(dir, "nope")}, "--request: stat"},
		{[]string{"cert", "sign", "--master-key", key, "--name", "a", "--wg-pub", "x"}, "needs --name, --wg-pub and --sign-pub"},
		{[]string{"cert", "sign", "--master-key", key, "--name", "a", "--wg-pub", "x", "--sign-pub", "y"}, "--wg-pub: wireguard public key: bad key"},
		{[]string{"cert", "sign", "--master-key", loose, "--request", req}, "key file permissions too open"},
		{[]string{"cert", "show"}, "needs exactly one certificate FILE"},
		{[]string{"cert", "show", garbage}, "malformed certificate"},
		{[]string{"cert", "show", filepath.Join(dir, "lab.cluster")}, "wrong kind of signed object: got a bundle"},
		{[]string{"cert", "show", garbage, "--revocation", garbage}, "--revocation needs --bundle"},
		{[]string{"revoke", "--master-key", key}, "needs exactly one SERIAL or NAME"},
		{[]string{"revoke", "x"}, "--master-key FILE is required"},
		{[]string{"policy", "sign", "--master-key", key}, "needs exactly one POLICY.txt"},
		{[]string{"policy", "sign", "--master-key", key, badPolicy}, `line 3: policy syntax error: unknown selector "everyone"`},
		{[]string{"policy", "check", badPolicy}, "line 3: policy syntax error"},
		{[]string{"policy", "check", garbage}, `line 1: policy syntax error: unknown statement "not"`},
		{[]string{"policy", "check", "--local", badPolicy}, `line 1: policy syntax error: unknown statement "default"`},
		{[]string{"policy", "check", filepath.Join(dir, "lab.cluster")}, "wrong kind of signed object"},
		{[]string{"policy", "check", dir}, "not a regular file"},
	} {
		code, out, errs := run(t, tc.args...)
		if code != cli.ExitUsage || !strings.Contains(errs, tc.want) {
			t.Errorf("pvcd %s: exit %d, stderr %q; want exit 2 and %q", strings.Join(tc.args, " "), code, errs, tc.want)
		}
		if n := strings.Count(errs, "\n"); n > 2 {
			t.Errorf("pvcd %s: error is %d lines, want one line plus the hint", strings.Join(tc.args, " "), n)
		}
		if out != "" {
			t.Errorf("pvcd %s: printed %q on stdout", strings.Join(tc.args, " "), out)
		}
	}
	// Failures of the work (exit 1), one line each.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cluster", "init", "lab", "--broker", "h:1", "--out", dir}, "cluster files already exist"},
		{[]string{"revoke", "--master-key", key, "nobody"}, `no such peer or serial: "nobody"`},
	} {
		code, _, errs := run(t, tc.args...)
		if code != cli.ExitFailure || !strings.Contains(errs, tc.want) || strings.Count(errs, "\n") != 1 {
			t.Errorf("pvcd %s: exit %d, stderr %q; want exit 1 and %q", strings.Join(tc.args, " "), code, errs, tc.want)
		}
	}
}

func TestSecurityHelp(t *testing.T) {
	for _, args := range [][]string{
		{"cluster", "init", "--help"}, {"token", "--help"}, {"keygen", "--help"}, {"cert", "sign", "--help"},
		{"cert", "show", "--help"}, {"revoke", "--help"}, {"policy", "sign", "--help"}, {"policy", "check", "--help"},
		{"cert", "--help"}, {"policy", "--help"}, {"cluster", "--help"},
	} {
		code, out, _ := run(t, args...)
		if code != 0 || !strings.Contains(out, "Usage: pvcd") {
			t.Errorf("pvcd %s: exit %d, %q", strings.Join(args, " "), code, out)
		}
	}
	_, out, _ := run(t, "--help")
	for _, v := range []string{"cluster", "token", "keygen", "cert", "revoke", "policy"} {
		if !strings.Contains(out, "  "+v+" ") {
			t.Errorf("pvcd --help does not list %s", v)
		}
	}
}
