// Package daemon is pvcd's coordinator: the workflow behind `pvcd up`. It
// enrolls the host on first start (token -> certificate through the
// brokers), then on every start brings up the TUN device with the certified
// address, the policy filter, the overlay engine, the cluster's DNS and the
// host resolver integration, the broker sessions and the control socket;
// it keeps the overlay's peers, the policy and the names in step with the
// verified view of the cluster, and undoes everything on exit.
package daemon

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/interpose/tun"
	"github.com/pvc-project/pvc/pvcd/control"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/enroll"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/policy"
	"github.com/pvc-project/pvc/security/token"
	"github.com/pvc-project/pvc/security/trust"
	"github.com/pvc-project/pvc/vnet/dns"
	"github.com/pvc-project/pvc/vnet/dns/hostdns"
	"github.com/pvc-project/pvc/vnet/filter"
	"github.com/pvc-project/pvc/vnet/overlay"
)

// Config is `pvcd up`'s configuration, parsed once from the flags.
type Config struct {
	Cluster     string // cluster name (required)
	BundlePath  string // the NAME.cluster file; "": the copy in the state dir
	StateDir    string // keys, certificate, bundle copy, control socket (required)
	Join        string // enrollment token, for the first start
	Name        string // this host's peer name (with Join; else from the certificate)
	MasterKey   string // the master key file: also answer enrollments and publish the master's objects
	Interface   string // TUN name; "": tun.DefaultName
	MTU         int    // TUN MTU; 0: tun.DefaultMTU
	ListenPort  uint16 // WireGuard UDP port; 0: any
	LocalPolicy string // the site administrator's local policy file; "": allow all
	HostsPath   string // hosts file for name integration; "": /etc/hosts
	// Techniques are the traversal techniques this host may use (nil: all).
	Techniques Techniques
	Version    string // for `pvcd status`
	Logger     *slog.Logger
	// Ready, if set, is called once the daemon serves (tests, systemd).
	Ready func(Status)
}

// Status is what Ready reports.
type Status struct {
	Name string
	IP   netip.Addr
	Port uint16
}

// Errors a user can act on.
var (
	ErrNoBundle     = errors.New("no cluster bundle")
	ErrNotEnrolled  = errors.New("this host is not enrolled")
	ErrWrongCluster = errors.New("bundle of another cluster")
)

// Run runs the daemon until ctx ends or `pvcd down` asks it to stop.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Interface == "" {
		cfg.Interface = tun.DefaultName
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := os.Chmod(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	b, err := loadBundle(cfg)
	if err != nil {
		return err
	}
	wg, sk, created, err := HostKeys(cfg.StateDir)
	if err != nil {
		return fmt.Errorf("host keys: %w", err)
	}
	if created {
		log.Info("created host keys", "dir", cfg.StateDir, "wireguard", wg.Public().String())
	}
	var local *policy.Local
	if cfg.LocalPolicy != "" {
		src, err := os.ReadFile(cfg.LocalPolicy)
		if err != nil {
			return fmt.Errorf("local policy: %w", err)
		}
		if local, err = policy.ParseLocal(src); err != nil {
			return fmt.Errorf("local policy %s: %w", cfg.LocalPolicy, err)
		}
	}

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var wgroup sync.WaitGroup
	defer wgroup.Wait()

	var m *masterRole
	if cfg.MasterKey != "" {
		if m, err = openMaster(cfg.MasterKey, b, sk, log); err != nil {
			return err
		}
		wgroup.Add(1)
		go func() { defer wgroup.Done(); m.run(ctx) }()
		if !m.waitPublished(ctx, 15*time.Second) {
			log.Warn("no broker holds the cluster's bundle yet; hosts cannot enroll until one does")
		}
	}
	crt, raw, err := certificate(ctx, cfg, b, wg, sk, m, log)
	if err != nil {
		return err
	}
	log.Info("certified", "name", crt.Name, "ip", crt.IP, "serial", crt.Serial, "groups", crt.Groups)

	// The TUN device with the certified address.
	td, err := tun.Create(tun.Config{Name: cfg.Interface, MTU: cfg.MTU, Prefix: netip.PrefixFrom(crt.IP, b.Subnet.Bits())})
	if err != nil {
		return err
	}
	d := &daemon{cfg: cfg, log: log, bundle: b, cert: crt, sk: sk, local: local, since: time.Now(), stop: stop, verified: map[string]*cert.Cert{}}
	// The brokers. Relayed datagrams go to the overlay once it exists.
	d.client, err = client.New(client.Config{Bundle: b, Cert: raw, Key: sk, UDP: true, Logger: log.With("part", "broker"),
		OnRelay: func(from string, data []byte) {
			if o := d.overlayOrNil(); o != nil {
				o.DeliverRelay(from, data)
			}
		},
		OnSignal: func(s client.Signal) {
			if pm := d.pm.Load(); pm != nil {
				pm.signal(s)
			}
		}})
	if err != nil {
		td.Close()
		return err
	}
	// The policy filter: deny everything until the view holds the policy.
	eng, err := d.engine(nil)
	if err != nil {
		td.Close()
		return err
	}
	d.filter, err = filter.New(td, filter.Config{Engine: eng, Peers: viewPeers{d}, LocalIP: crt.IP, Logger: log.With("part", "filter")})
	if err != nil {
		td.Close()
		return err
	}
	o, err := overlay.New(overlay.Config{Self: crt.Name, Address: crt.IP, PrivateKey: wg, ListenPort: cfg.ListenPort,
		TUN: d.filter, Relay: relayAdapter{d.client}, Auth: probeAuth{d}, Logger: log.With("part", "overlay"),
		Other:     func(pkt []byte, from netip.AddrPort) { d.pm.Load().input(pkt, from) },
		OnTrouble: func(string) { d.client.Refresh() },
		OnActive: func(name string) {
			if pm := d.pm.Load(); pm != nil {
				pm.active(name)
			}
		}})
	if err != nil {
		td.Close()
		return err
	}
	d.setOverlay(o)
	defer o.Close() // closes the TUN, which removes the interface and its routes

	// Names.
	d.dir = dns.NewMemDirectory()
	h, err := dns.NewHandler(dns.Config{Domain: b.Domain, Subnet: b.Subnet, Directory: d.dir})
	if err != nil {
		return err
	}
	dnsSrv, err := dns.Listen(ctx, netip.AddrPortFrom(crt.IP, 53).String(), h, log.With("part", "dns"))
	if err != nil {
		return fmt.Errorf("DNS on %v: %w", crt.IP, err)
	}
	d.hosts, err = hostdns.New(hostdns.Config{Cluster: b.Cluster, Domain: b.Domain, ReverseZone: h.ReverseZone(),
		Link: cfg.Interface, Server: crt.IP, HostsPath: cfg.HostsPath, Logger: log.With("part", "hostdns")})
	if err != nil {
		dnsSrv.Close()
		return err
	}
	defer d.undoHosts()

	// Control socket.
	ctl, err := control.Listen(cfg.StateDir, d, log)
	if err != nil {
		dnsSrv.Close()
		return err
	}

	run := func(f func()) { wgroup.Add(1); go func() { defer wgroup.Done(); f() }() }
	// The traversal techniques.
	tech := cfg.Techniques
	if tech == nil {
		tech, _ = ParseTechniques("all")
	}
	pm := newPathManager(d, o, tech)
	if err := pm.start(ctx, run); err != nil {
		dnsSrv.Close()
		return err
	}
	defer pm.close()
	d.pm.Store(pm)
	run(func() { _ = dnsSrv.Run(ctx) })
	run(func() { _ = ctl.Run(ctx) })
	run(func() { _ = d.client.Run(ctx) })
	run(func() { o.Run(ctx) })
	run(func() { _ = d.filter.Run(ctx) })
	run(func() { d.syncLoop(ctx) })
	run(func() { d.publishLoop(ctx, raw) })

	log.Info("up", "cluster", b.Cluster, "name", crt.Name, "ip", crt.IP, "interface", cfg.Interface, "port", o.Port(), "techniques", tech.String())
	if cfg.Ready != nil {
		cfg.Ready(Status{Name: crt.Name, IP: crt.IP, Port: o.Port()})
	}
	<-ctx.Done()
	log.Info("shutting down")
	return nil
}

// loadBundle reads the cluster bundle: the file given, saved into the state
// dir for later starts, or the saved copy.
func loadBundle(cfg Config) (*bundle.Bundle, error) {
	saved := filepath.Join(cfg.StateDir, BundleFile)
	path := cfg.BundlePath
	if path == "" {
		path = saved
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && cfg.BundlePath == "" {
		return nil, fmt.Errorf("%w in %s: give --bundle FILE (the %s.cluster file from the cluster's master)", ErrNoBundle, cfg.StateDir, cfg.Cluster)
	}
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	b, err := bundle.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	if b.Cluster != cfg.Cluster {
		return nil, fmt.Errorf("%w: %s is the bundle of cluster %q, not %q", ErrWrongCluster, path, b.Cluster, cfg.Cluster)
	}
	if path != saved {
		if old, err := os.ReadFile(saved); err == nil {
			if ob, err := bundle.Decode(old); err == nil && (string(ob.MasterKey) != string(b.MasterKey)) {
				return nil, fmt.Errorf("%w: %s has another master than the bundle this host already trusts (%s)", ErrWrongCluster, path, saved)
			}
		}
		if err := keys.WriteFileAtomic(saved, data, 0o644); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// certificate returns the host's certificate: the saved one if it still
// verifies, else a new one from the master (if this host holds the master
// key) or by enrollment with a token through the brokers.
func certificate(ctx context.Context, cfg Config, b *bundle.Bundle, wg keys.WGPrivate, sk ed25519.PrivateKey, m *masterRole, log *slog.Logger) (*cert.Cert, []byte, error) {
	path := filepath.Join(cfg.StateDir, CertFile)
	ts := trust.New(b)
	if raw, err := os.ReadFile(path); err == nil {
		c, err := ts.VerifyCert(raw, time.Now())
		if err == nil && c.WGKey == wg.Public() {
			return c, raw, nil
		}
		log.Warn("saved certificate unusable; enrolling again", "err", err)
	}
	var c *cert.Cert
	var err error
	switch {
	case m != nil:
		name := cfg.Name
		if name == "" {
			name = "master"
		}
		c, err = m.issueSelf(name, wg, sk)
	case cfg.Join != "":
		if cfg.Name == "" {
			return nil, nil, fmt.Errorf("%w: --join needs --name NAME", ErrNotEnrolled)
		}
		var tok *token.Token
		if tok, err = token.Parse(cfg.Join); err != nil {
			return nil, nil, fmt.Errorf("--join: %w", err)
		}
		var req *enroll.Request
		if req, err = enroll.New(tok, cfg.Name, wg.Public(), sk, time.Now()); err != nil {
			return nil, nil, fmt.Errorf("enrollment request: %w", err)
		}
		log.Info("enrolling through the brokers", "name", cfg.Name)
		c, err = enrollRetry(ctx, b, req.Encode(), log)
	default:
		return nil, nil, fmt.Errorf("%w: start once with --join TOKEN --name NAME (a token from the master: pvcd token)", ErrNotEnrolled)
	}
	if err != nil {
		return nil, nil, err
	}
	raw := c.Encode()
	if err := keys.WriteFileAtomic(path, raw, 0o644); err != nil {
		return nil, nil, err
	}
	return c, raw, nil
}

// enrollRetry submits the enrollment request until the master answers: a
// broker that does not serve the cluster yet, or no broker reachable, is
// worth another try for a minute; a refusal by the master is final.
func enrollRetry(ctx context.Context, b *bundle.Bundle, req []byte, log *slog.Logger) (*cert.Cert, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		c, err := client.Enroll(ctx, b, req, time.Now)
		if err == nil || errors.Is(err, client.ErrEnrollRefused) {
			return c, err
		}
		log.Info("enrollment not answered yet; trying again", "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("enrollment: no master answered within a minute: %w", err)
		case <-time.After(2 * time.Second):
		}
	}
}
