package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/enroll"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
	"github.com/pvc-project/pvc/security/name"
	"github.com/pvc-project/pvc/security/revoke"
)

func certVerb() cli.Verb {
	return cli.Verb{Name: "cert", Summary: "sign (master) or show a peer certificate: cert sign|show", Run: runCert}
}

func runCert(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runSub(ctx, "cert", []cli.Verb{
		{Name: "sign", Summary: "sign a peer certificate from an enrollment request or from keys (master)", Run: runCertSign},
		{Name: "show", Summary: "print a certificate, and verify it against a cluster bundle", Run: runCertShow},
	}, args, stdout, stderr)
}

func runCertSign(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet("cert sign",
		"pvcd cert sign --master-key FILE (--request FILE | --name N --wg-pub KEY --sign-pub KEY [--groups a,b] [--ttl DUR]) [--out FILE]",
		`Signs a peer certificate. With --request, admits an enrollment request made
by pvcd keygen (its token is checked and counted like an automatic
admission). With --name and the host's public keys, the administrator admits
the host by hand (a name enrolled before keeps its virtual IP).`, stdout)
	keyPath := fs.String("master-key", "", "the master key `FILE` (required)")
	reqPath := fs.String("request", "", "enrollment request `FILE` (from pvcd keygen --token)")
	peer := fs.String("name", "", "the peer's `NAME` (admission by hand)")
	wgPub := fs.String("wg-pub", "", "the peer's WireGuard public `KEY` (base64 or hex)")
	signPub := fs.String("sign-pub", "", "the peer's Ed25519 signing public `KEY` (base64 or hex)")
	var groups cli.Multi
	fs.Var(&groups, "groups", "`GROUPS` of the peer (admission by hand)")
	ttl := fs.Duration("ttl", master.DefaultCertTTL, "lifetime of the certificate (`DUR`; admission by hand)")
	out := fs.String("out", "", "where to write the certificate (`FILE`; default NAME.cert next to the master key)")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	byHand := *peer != "" || *wgPub != "" || *signPub != ""
	var opts master.CertOptions
	var req []byte
	switch {
	case *reqPath != "" && byHand:
		return cli.Usagef("give either --request or --name/--wg-pub/--sign-pub, not both")
	case *reqPath != "":
		if len(groups) > 0 || *ttl != master.DefaultCertTTL {
			return cli.Usagef("--groups and --ttl go with admission by hand; a request gets its token's groups")
		}
		if req, err = readInput("--request", *reqPath); err != nil {
			return err
		}
		if _, err := enroll.Decode(req); err != nil {
			return cli.Usagef("--request %s: %v", *reqPath, err)
		}
	case byHand:
		if *peer == "" || *wgPub == "" || *signPub == "" {
			return cli.Usagef("admission by hand needs --name, --wg-pub and --sign-pub")
		}
		if err := name.Check(*peer); err != nil {
			return cli.Usagef("--name: %v", err)
		}
		opts.Name = *peer
		if opts.WGKey, err = keys.ParseWGPublic(*wgPub); err != nil {
			return cli.Usagef("--wg-pub: %v", err)
		}
		if opts.SignKey, err = keys.ParsePublic(*signPub); err != nil {
			return cli.Usagef("--sign-pub: %v", err)
		}
		if opts.Groups, err = parseGroups(groups); err != nil {
			return err
		}
		if *ttl <= 0 {
			return cli.Usagef("--ttl %v: want a positive duration", *ttl)
		}
		opts.TTL = *ttl
	default:
		return cli.Usagef("give --request FILE, or --name, --wg-pub and --sign-pub")
	}
	m, err := openMaster(*keyPath)
	if err != nil {
		return err
	}
	var c *cert.Cert
	if req != nil {
		c, err = m.Admit(req)
	} else {
		c, err = m.Issue(opts)
	}
	if err != nil {
		return err
	}
	if *out == "" {
		*out = filepath.Join(filepath.Dir(*keyPath), c.Name+".cert")
	}
	if err := keys.WriteFileAtomic(*out, c.Encode(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "signed certificate for %s: %v, serial %d, groups %s, valid until %s\n",
		c.Name, c.IP, c.Serial, orNone(c.Groups), c.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(stdout, "written to %s\n", *out)
	return nil
}

// certJSON is the --json form of pvcd cert show.
type certJSON struct {
	Cluster   string    `json:"cluster"`
	Name      string    `json:"name"`
	IP        string    `json:"ip"`
	WGKey     string    `json:"wireguard_key"`
	SignKey   string    `json:"signing_key"`
	Groups    []string  `json:"groups"`
	Serial    uint64    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	Signer    string    `json:"signer"`
	Verified  *bool     `json:"verified,omitempty"` // with --bundle
	Error     string    `json:"error,omitempty"`
}

func runCertShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet("cert show", "pvcd cert show FILE [--bundle NAME.cluster [--revocation FILE]] [--json]",
		`Prints a peer certificate. With --bundle it also verifies it against the
cluster's master key, cluster name and subnet, and the current time; a
certificate that does not verify makes the exit status 1.`, stdout)
	bundlePath := fs.String("bundle", "", "cluster bundle `FILE` to verify the certificate against")
	revPath := fs.String("revocation", "", "signed revocation list `FILE` to check the serial against (with --bundle)")
	asJSON := fs.Bool("json", false, "print JSON instead of text")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return cli.Usagef("cert show needs exactly one certificate FILE")
	}
	if *revPath != "" && *bundlePath == "" {
		return cli.Usagef("--revocation needs --bundle")
	}
	data, err := readInput("certificate", pos[0])
	if err != nil {
		return err
	}
	c, err := cert.Decode(data)
	if err != nil {
		return cli.Usagef("%s: %v", pos[0], err)
	}
	var verr error
	var verified *bool
	if *bundlePath != "" {
		bd, err := readInput("--bundle", *bundlePath)
		if err != nil {
			return err
		}
		b, err := bundle.Decode(bd)
		if err != nil {
			return cli.Usagef("--bundle %s: %v", *bundlePath, err)
		}
		var rev *revoke.List
		if *revPath != "" {
			rd, err := readInput("--revocation", *revPath)
			if err != nil {
				return err
			}
			if rev, err = revoke.Decode(rd); err != nil {
				return cli.Usagef("--revocation %s: %v", *revPath, err)
			}
			if err := rev.Verify(b.MasterKey, b.Cluster); err != nil {
				return cli.Usagef("--revocation %s: %v", *revPath, err)
			}
		}
		verr = c.Verify(b.MasterKey, b.Cluster, time.Now(), rev)
		if verr == nil && !b.Subnet.Contains(c.IP) {
			verr = fmt.Errorf("virtual IP %v outside the cluster subnet %v", c.IP, b.Subnet)
		}
		ok := verr == nil
		verified = &ok
	}
	if *asJSON {
		j := certJSON{Cluster: c.Cluster, Name: c.Name, IP: c.IP.String(), WGKey: c.WGKey.String(),
			SignKey: keys.FormatPublic(c.SignKey), Groups: c.Groups, Serial: c.Serial,
			NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(), Signer: keys.FormatPublic(c.Object().Signer), Verified: verified}
		if j.Groups == nil {
			j.Groups = []string{}
		}
		if verr != nil {
			j.Error = verr.Error()
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(j); err != nil {
			return err
		}
	} else {
		var b strings.Builder
		fmt.Fprintf(&b, "certificate %s.%s serial %d\n", c.Name, c.Cluster, c.Serial)
		fmt.Fprintf(&b, "  virtual IP   %v\n  groups       %s\n", c.IP, orNone(c.Groups))
		fmt.Fprintf(&b, "  valid        %s to %s\n", c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
		fmt.Fprintf(&b, "  wireguard    %s\n  signing key  %s\n  signed by    %s\n", c.WGKey, keys.FormatPublic(c.SignKey), keys.FormatPublic(c.Object().Signer))
		switch {
		case verified == nil:
			b.WriteString("  verified     not checked (give --bundle NAME.cluster)\n")
		case verr == nil:
			b.WriteString("  verified     yes\n")
		default:
			fmt.Fprintf(&b, "  verified     NO: %v\n", verr)
		}
		io.WriteString(stdout, b.String())
	}
	return verr
}
