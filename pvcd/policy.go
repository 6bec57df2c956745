package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/policy"
)

func policyVerb() cli.Verb {
	return cli.Verb{Name: "policy", Summary: "sign (master) or check a global or local policy: policy sign|check", Run: runPolicy}
}

func runPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runSub(ctx, "policy", []cli.Verb{
		{Name: "sign", Summary: "compile and sign a global policy text as the next version (master)", Run: runPolicySign},
		{Name: "check", Summary: "validate a global policy (text or signed) or a local policy, print a summary", Run: runPolicyCheck},
	}, args, stdout, stderr)
}

func runPolicySign(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet("policy sign", "pvcd policy sign --master-key FILE POLICY.txt [--out FILE]",
		`Compiles the global policy text POLICY.txt, signs it as the next version
and puts it in force in the master's state; writes the signed policy to --out
(default CLUSTER.policy next to the master key) to be published through the
brokers. See docs/security.md for the format.`, stdout)
	keyPath := fs.String("master-key", "", "the master key `FILE` (required)")
	out := fs.String("out", "", "where to write the signed policy (`FILE`)")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return cli.Usagef("policy sign needs exactly one POLICY.txt")
	}
	src, err := readInput("policy", pos[0])
	if err != nil {
		return err
	}
	g, err := policy.ParseGlobal(src)
	if err != nil {
		return cli.Usagef("%s: %v", pos[0], err)
	}
	m, err := openMaster(*keyPath)
	if err != nil {
		return err
	}
	if err := m.SignPolicy(g); err != nil {
		return err
	}
	if *out == "" {
		*out = filepath.Join(filepath.Dir(*keyPath), m.Cluster()+".policy")
	}
	if err := keys.WriteFileAtomic(*out, g.Encode(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "signed global policy v%d for cluster %s: %d rule(s), default %s; written to %s\n",
		g.Version, g.Cluster, len(g.Rules), g.Default, *out)
	return nil
}

func runPolicyCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet("policy check", "pvcd policy check FILE [--local] [--bundle NAME.cluster] [--verbose]",
		`Validates a policy file and prints a summary: a global policy, either its
text source or the signed file made by policy sign (verified against --bundle
if given), or with --local a host's local policy. Errors name the line.`, stdout)
	local := fs.Bool("local", false, "FILE is a local policy")
	bundlePath := fs.String("bundle", "", "cluster bundle `FILE` to verify a signed policy against")
	verbose := fs.Bool("verbose", false, "also print the policy in canonical text form")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return cli.Usagef("policy check needs exactly one FILE")
	}
	data, err := readInput("policy", pos[0])
	if err != nil {
		return err
	}
	if *local {
		l, err := policy.ParseLocal(data)
		if err != nil {
			return cli.Usagef("%s: %v", pos[0], err)
		}
		in := "any local port"
		if l.RestrictInbound {
			in = fmt.Sprintf("%d inbound line(s)", len(l.Inbound))
		}
		fmt.Fprintf(stdout, "%s: local policy OK: %d domain network(s); outside peers: inbound %s, outbound %s; %s\n",
			pos[0], len(l.Domain), l.OutsideInbound, l.OutsideOutbound, in)
		if *verbose {
			io.WriteString(stdout, l.Text())
		}
		return nil
	}
	var g *policy.Global
	what := "global policy source"
	if bytes.HasPrefix(data, []byte("PVC")) {
		if g, err = policy.Decode(data); err != nil {
			return cli.Usagef("%s: %v", pos[0], err)
		}
		what = fmt.Sprintf("signed global policy v%d of cluster %s", g.Version, g.Cluster)
		if *bundlePath != "" {
			bd, err := readInput("--bundle", *bundlePath)
			if err != nil {
				return err
			}
			b, err := bundle.Decode(bd)
			if err != nil {
				return cli.Usagef("--bundle %s: %v", *bundlePath, err)
			}
			if err := g.Verify(b.MasterKey, b.Cluster); err != nil {
				return err
			}
			what += ", signature verified"
		} else {
			what += " (signature not checked: give --bundle)"
		}
	} else if g, err = policy.ParseGlobal(data); err != nil {
		return cli.Usagef("%s: %v", pos[0], err)
	}
	fmt.Fprintf(stdout, "%s: %s OK: %d rule(s), default %s\n", pos[0], what, len(g.Rules), g.Default)
	if *verbose {
		io.WriteString(stdout, g.Text())
	}
	return nil
}
