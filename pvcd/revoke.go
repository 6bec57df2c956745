package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/security/keys"
)

func revokeVerb() cli.Verb {
	return cli.Verb{Name: "revoke", Summary: "revoke a peer or a certificate serial (master)", Run: runRevoke}
}

func runRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet("revoke", "pvcd revoke --master-key FILE SERIAL|NAME [--out FILE]",
		`Revokes every certificate of the peer NAME (and refuses its re-enrollment),
or the certificate with serial SERIAL, and signs the next version of the
cluster's revocation list. The list is kept in the master's state and
written to --out (default CLUSTER.revocation next to the master key) to be
published through the brokers.`, stdout)
	keyPath := fs.String("master-key", "", "the master key `FILE` (required)")
	out := fs.String("out", "", "where to write the signed revocation list (`FILE`)")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return cli.Usagef("revoke needs exactly one SERIAL or NAME")
	}
	m, err := openMaster(*keyPath)
	if err != nil {
		return err
	}
	l, added, err := m.Revoke(pos[0])
	if err != nil {
		return err
	}
	if *out == "" {
		*out = filepath.Join(filepath.Dir(*keyPath), m.Cluster()+".revocation")
	}
	if err := keys.WriteFileAtomic(*out, l.Encode(), 0o644); err != nil {
		return err
	}
	ss := make([]string, len(added))
	for i, s := range added {
		ss[i] = fmt.Sprint(s)
	}
	fmt.Fprintf(stdout, "revoked %s (serial %s); revocation list v%d (%d serials) written to %s\n",
		pos[0], strings.Join(ss, ", "), l.Version, len(l.Serials), *out)
	return nil
}
