package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/pvcd/daemon"
	"github.com/pvc-project/pvc/security/enroll"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
	"github.com/pvc-project/pvc/security/name"
	"github.com/pvc-project/pvc/security/token"
)

// requestFile is the enrollment request keygen writes in the state dir.
const requestFile = "enroll.req"

func keygenVerb() cli.Verb {
	return cli.Verb{Name: "keygen", Summary: "create this host's keys, and an enrollment request from a token", Run: runKeygen}
}

func runKeygen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := cli.NewFlagSet("keygen",
		"pvcd keygen --state-dir DIR [--token TOKEN --name NAME [--out FILE]]",
		`Creates this host's WireGuard and signing keys in DIR (wg.key, sign.key,
mode 0600) unless they exist, and prints their public halves. With --token and
--name it also writes an enrollment request signed with the host's key
(default DIR/enroll.req), for admission by hand: pvcd cert sign --request FILE.`, stdout)
	dir := fl.String("state-dir", "", "the host's state `DIR` (required)")
	tok := fl.String("token", "", "enrollment `TOKEN` (pvc1-...) to build a request with")
	peer := fl.String("name", "", "this host's peer `NAME` in the cluster (with --token)")
	out := fl.String("out", "", "where to write the request (`FILE`; default DIR/enroll.req)")
	pos, err := cli.Parse(fl, args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	if *dir == "" {
		return cli.Usagef("--state-dir DIR is required")
	}
	var t *token.Token
	if *tok != "" || *peer != "" {
		if *tok == "" || *peer == "" {
			return cli.Usagef("--token and --name go together")
		}
		if err := name.Check(*peer); err != nil {
			return cli.Usagef("--name: %v", err)
		}
		if t, err = token.Parse(*tok); err != nil {
			return cli.Usagef("--token: %v", err)
		}
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	wg, sk, created, err := hostKeys(*dir)
	if err != nil {
		return err
	}
	verb := "using existing"
	if created {
		verb = "created"
	}
	fmt.Fprintf(stdout, "%s keys in %s: wireguard %s, signing %s\n", verb, *dir, wg.Public(), keys.FormatPublic(sk.Public().(ed25519.PublicKey)))
	if t == nil {
		return nil
	}
	req, err := enroll.New(t, *peer, wg.Public(), sk, time.Now())
	if err != nil {
		return cli.Usagef("%v", err)
	}
	if *out == "" {
		*out = filepath.Join(*dir, requestFile)
	}
	if err := keys.WriteFileAtomic(*out, req.Encode(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "enrollment request for %s in cluster %s written to %s (valid %v)\n", *peer, t.Cluster, *out, master.MaxRequestAge)
	return nil
}

// hostKeys loads or creates the host's keys; a bad key file is bad input.
func hostKeys(dir string) (keys.WGPrivate, ed25519.PrivateKey, bool, error) {
	wg, sk, created, err := daemon.HostKeys(dir)
	if err != nil && !created && isInputProblem(err) {
		return wg, sk, false, cli.Usagef("%v", err)
	}
	return wg, sk, created, err
}
