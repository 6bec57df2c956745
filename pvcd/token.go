package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/security/master"
	"github.com/pvc-project/pvc/security/token"
)

func tokenVerb() cli.Verb {
	return cli.Verb{Name: "token", Summary: "issue an enrollment token (master)", Run: runToken}
}

func runToken(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet("token",
		"pvcd token --master-key FILE [--uses N] [--ttl DUR] [--name-pattern GLOB] [--groups a,b]",
		`Prints an enrollment token on stdout (one line, "pvc1-..."), and what it
allows on stderr. A host joins with it: pvcd up --cluster NAME --join TOKEN.
The master counts the uses and refuses the (N+1)th.`, stdout)
	keyPath := fs.String("master-key", "", "the master key `FILE` (made by pvcd cluster init; required)")
	uses := fs.Uint("uses", 1, "how many hosts may join with the token (`N`)")
	ttl := fs.Duration("ttl", master.DefaultTokenTTL, "how long the token is valid (`DUR`, e.g. 1h, 72h)")
	pattern := fs.String("name-pattern", "", "`GLOB` the joining hosts' names must match (e.g. 'node-*'; default any)")
	var groups cli.Multi
	fs.Var(&groups, "groups", "`GROUPS` given to the hosts that join with it (comma-separated or repeated)")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	if *uses == 0 || *uses > math.MaxUint32 {
		return cli.Usagef("--uses %d: want 1 to %d", *uses, uint32(math.MaxUint32))
	}
	if *ttl <= 0 {
		return cli.Usagef("--ttl %v: want a positive duration such as 24h", *ttl)
	}
	if err := token.CheckPattern(*pattern); err != nil {
		return cli.Usagef("--name-pattern: %v", err)
	}
	gs, err := parseGroups(groups)
	if err != nil {
		return err
	}
	m, err := openMaster(*keyPath)
	if err != nil {
		return err
	}
	t, err := m.NewToken(master.TokenOptions{Uses: uint32(*uses), TTL: *ttl, NamePattern: *pattern, Groups: gs})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, t.String())
	fmt.Fprintf(stderr, "token %s for cluster %s: %d use(s), expires %s, names %s, groups %s\n",
		t.ID[:8], t.Cluster, t.Uses, t.Expires.UTC().Format(time.RFC3339), orAny(t.NamePattern), orNone(t.Groups))
	return nil
}

func orAny(s string) string {
	if s == "" {
		return "any"
	}
	return s
}

func orNone(gs []string) string {
	if len(gs) == 0 {
		return "none"
	}
	s := gs[0]
	for _, g := range gs[1:] {
		s += "," + g
	}
	return s
}
