// Package brokertest starts broker replicas and peers in-process on loopback
// (real TCP, TLS and UDP sockets), with a cluster made by security/master, so
// that tests of the broker, of pvcd and of the lab can share one harness.
package brokertest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/broker/server"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
)

// Options shape a Lab. Zero values are fine.
type Options struct {
	Brokers int           // replicas; 0: 1
	Cluster string        // "": "lab"
	Limits  server.Limits // for every replica
	NoLinks bool          // do not link the replicas
	// ShareVerifyCache makes the lab's clients share one
	// client.VerifyCache, so that each distinct object is verified once in
	// the process rather than once per client (benchmarks with many
	// simulated peers).
	ShareVerifyCache bool
	// Hook, if set, gives a replica a hook on its outgoing messages (a
	// malicious broker test double); nil hooks are fine.
	Hook func(i int) func(proto.Message) proto.Message
}

// Broker is one replica of a Lab.
type Broker struct {
	Addr        string // TCP HOST:PORT
	UDPAddr     string
	MetricsAddr string
	Key         ed25519.PublicKey
	StateDir    string
	Log         *Buffer // everything it logged, across restarts
	Server      *server.Server

	cancel context.CancelFunc
	done   chan error
}

// Lab is a cluster with its master and broker replicas.
type Lab struct {
	T         testing.TB
	Dir       string
	Cluster   string
	Master    *master.Master
	MasterKey ed25519.PrivateKey
	Bundle    *bundle.Bundle
	Brokers   []*Broker
	opts      Options
	cache     *client.VerifyCache // shared by the clients, or nil
}

// Peer is an enrolled host: its certificate and private keys.
type Peer struct {
	Name string
	Cert *cert.Cert
	Key  ed25519.PrivateKey
	WG   keys.WGPrivate
}

// Start makes the cluster and starts its replicas; everything stops at the
// end of the test.
func Start(t testing.TB, o Options) *Lab {
	t.Helper()
	if o.Brokers <= 0 {
		o.Brokers = 1
	}
	if o.Cluster == "" {
		o.Cluster = "lab"
	}
	l := &Lab{T: t, Dir: t.TempDir(), Cluster: o.Cluster, opts: o}
	if o.ShareVerifyCache {
		l.cache = client.NewVerifyCache(0)
	}
	var bs []bundle.Broker
	for range o.Brokers {
		b := &Broker{StateDir: t.TempDir(), Log: &Buffer{}}
		key, _, err := server.LoadOrCreateKey(b.StateDir)
		if err != nil {
			t.Fatal(err)
		}
		b.Key = key.Public().(ed25519.PublicKey)
		// UDP on the TCP port, as pvc-broker does by default: clients send
		// relay datagrams to the HOST:PORT of the bundle.
		b.Addr, b.MetricsAddr = freeTCPUDP(t), freeTCP(t)
		b.UDPAddr = b.Addr
		l.Brokers = append(l.Brokers, b)
		bs = append(bs, bundle.Broker{Addr: b.Addr, Key: b.Key})
	}
	m, err := master.Init(l.Dir, o.Cluster, master.InitOptions{Brokers: bs})
	if err != nil {
		t.Fatal(err)
	}
	l.Master, l.Bundle = m, m.Bundle()
	if l.MasterKey, err = keys.LoadSigning(master.KeyPath(l.Dir, o.Cluster)); err != nil {
		t.Fatal(err)
	}
	for i := range l.Brokers {
		l.StartBroker(i)
	}
	t.Cleanup(func() {
		for i := range l.Brokers {
			l.StopBroker(i)
		}
	})
	return l
}

func freeTCP(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// freeTCPUDP returns a loopback port free for both TCP and UDP.
func freeTCPUDP(t testing.TB) string {
	for range 20 {
		a := freeTCP(t)
		if pc, err := net.ListenPacket("udp", a); err == nil {
			pc.Close()
			return a
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return ""
}

// StartBroker starts (or restarts, with its state dir and addresses)
// replica i. Replica i links to the replicas before it.
func (l *Lab) StartBroker(i int) {
	t := l.T
	t.Helper()
	b := l.Brokers[i]
	if b.cancel != nil {
		t.Fatalf("broker %d already running", i)
	}
	cfg := server.Config{StateDir: b.StateDir, Bundles: [][]byte{l.Bundle.Encode()}, Limits: l.opts.Limits,
		Logger: slog.New(slog.NewTextHandler(b.Log, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if !l.opts.NoLinks {
		for j := range i {
			cfg.PeerBrokers = append(cfg.PeerBrokers, l.Brokers[j].Addr)
		}
	}
	if l.opts.Hook != nil {
		cfg.Hook = l.opts.Hook(i)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ls server.Listeners
	// The port was free a moment ago (or was ours before a restart); retry
	// briefly in case the old socket lingers.
	for try := 0; ; try++ {
		ls.TCP, err = net.Listen("tcp", b.Addr)
		if err == nil || try > 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if ls.UDP, err = net.ListenPacket("udp", b.UDPAddr); err != nil {
		t.Fatal(err)
	}
	if ls.Metrics, err = net.Listen("tcp", b.MetricsAddr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Server, b.cancel, b.done = srv, cancel, make(chan error, 1)
	go func() { b.done <- srv.Serve(ctx, ls) }()
}

// StopBroker stops replica i and waits until it has saved its state.
func (l *Lab) StopBroker(i int) {
	b := l.Brokers[i]
	if b.cancel == nil {
		return
	}
	b.cancel()
	if err := <-b.done; err != nil {
		l.T.Errorf("broker %d: %v", i, err)
	}
	b.cancel = nil
}

// Peer issues a certificate for a new host with fresh keys and publishes it
// to the running replicas.
func (l *Lab) Peer(name string, groups ...string) *Peer {
	t := l.T
	t.Helper()
	key, err := keys.NewSigning()
	if err != nil {
		t.Fatal(err)
	}
	wg, err := keys.NewWG()
	if err != nil {
		t.Fatal(err)
	}
	c, err := l.Master.Issue(master.CertOptions{Name: name, WGKey: wg.Public(), SignKey: key.Public().(ed25519.PublicKey), Groups: groups})
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range l.Brokers {
		if b.cancel != nil {
			if _, err := b.Server.Publish(c.Encode()); err != nil {
				t.Fatalf("publish %s's certificate to broker %d: %v", name, i, err)
			}
		}
	}
	return &Peer{Name: name, Cert: c, Key: key, WG: wg}
}

// Client starts a broker client for p (mod may adjust its configuration)
// and stops it at the end of the test.
func (l *Lab) Client(p *Peer, mod func(*client.Config)) *client.Client {
	cfg := client.Config{Bundle: l.Bundle, Cert: p.Cert.Encode(), Key: p.Key, Retry: 50 * time.Millisecond, VerifyCache: l.cache}
	if mod != nil {
		mod(&cfg)
	}
	return l.run(cfg)
}

// MasterClient starts the master's broker client, admitting enrollment
// requests with l.Master.
func (l *Lab) MasterClient() *client.Client {
	return l.run(client.Config{Bundle: l.Bundle, Role: proto.RoleMaster, Key: l.MasterKey, Retry: 50 * time.Millisecond,
		Admit: func(req []byte) ([]byte, error) {
			c, err := l.Master.Admit(req)
			if err != nil {
				return nil, err
			}
			return c.Encode(), nil
		}})
}

func (l *Lab) run(cfg client.Config) *client.Client {
	t := l.T
	t.Helper()
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// Ctx returns a context that ends after d or at the end of the test.
func Ctx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Buffer is a bytes.Buffer safe for concurrent use (a log sink).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) { b.mu.Lock(); defer b.mu.Unlock(); return b.b.Write(p) }

// String returns everything written.
func (b *Buffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return b.b.String() }

// WaitFor polls the buffer until it contains s (log lines are written
// asynchronously to the event that a test observes).
func (b *Buffer) WaitFor(s string, d time.Duration) bool {
	for end := time.Now().Add(d); ; time.Sleep(10 * time.Millisecond) {
		if strings.Contains(b.String(), s) {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

// CheckGoroutines fails t if more goroutines run than before (allowing a
// moment for exiting ones), listing them.
func CheckGoroutines(t testing.TB, before int) {
	t.Helper()
	var n int
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if n = runtime.NumGoroutine(); n <= before {
			return
		}
	}
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	t.Errorf("goroutine leak: %d running, %d before\n%s", n, before, buf)
}

// String describes the lab (for failure messages).
func (l *Lab) String() string {
	var s []string
	for i, b := range l.Brokers {
		s = append(s, fmt.Sprintf("broker %d %s", i, b.Addr))
	}
	return strings.Join(s, ", ")
}
