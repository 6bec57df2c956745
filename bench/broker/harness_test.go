package broker

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/broker/server"
	"github.com/pvc-project/pvc/internal/plot"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
)

// resultsDir is where the CSV files go (relative to this package).
const resultsDir = "../results/broker"

// brokerFlag runs another pvc-broker binary (e.g. bin/pvc-broker, or an
// older build to compare with) instead of building this tree's.
var brokerFlag = flag.String("broker", "", "pvc-broker `binary` to measure (default: build this tree's)")

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" { // the join storm's peers (helper_test.go)
		f := strings.SplitN(h, ",", 3)
		for len(f) < 3 {
			f = append(f, "")
		}
		n, _ := strconv.Atoi(f[1])
		if err := runStormHelper(f[0], n, f[2]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// brokerBinary builds pvc-broker once per run (only when a benchmark needs
// it, so that `go test` without -bench builds nothing).
func brokerBinary(tb testing.TB) string {
	tb.Helper()
	if *brokerFlag != "" {
		p, err := filepath.Abs(*brokerFlag)
		if err != nil {
			tb.Fatal(err)
		}
		return p
	}
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "pvc-bench-broker"); binErr != nil {
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = "/usr/local/go/bin/go"
		}
		out, err := exec.Command(goTool, "build", "-o", filepath.Join(binDir, "pvc-broker"), "github.com/pvc-project/pvc/broker").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("build pvc-broker: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		tb.Fatal(binErr)
	}
	return filepath.Join(binDir, "pvc-broker")
}

// raiseNoFile raises RLIMIT_NOFILE to its hard limit and skips unless n
// descriptors fit (the broker child inherits the raised limit).
func raiseNoFile(tb testing.TB, n uint64) {
	tb.Helper()
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		tb.Fatal(err)
	}
	r.Cur = r.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		tb.Fatal(err)
	}
	if r.Cur < n {
		tb.Skipf("needs %d file descriptors, the hard limit is %d (ulimit -Hn)", n, r.Max)
	}
}

// lab is a cluster for a benchmark: master key, bundle (written to a
// file) pinning one broker, and certificates signed directly with the
// master key (security/master keeps a JSON peer table that it rewrites at
// every issue; 10,000 issues would measure that).
type lab struct {
	dir        string
	cluster    string
	masterKey  ed25519.PrivateKey
	bundle     *bundle.Bundle
	bundleFile string
	next       int
}

func newLab(tb testing.TB, brokers []bundle.Broker) *lab {
	tb.Helper()
	dir := tb.TempDir()
	m, err := master.Init(dir, "bench", master.InitOptions{Brokers: brokers, Subnet: netip.MustParsePrefix("240.77.0.0/16")})
	if err != nil {
		tb.Fatal(err)
	}
	key, err := keys.LoadSigning(master.KeyPath(dir, "bench"))
	if err != nil {
		tb.Fatal(err)
	}
	return &lab{dir: dir, cluster: "bench", masterKey: key, bundle: m.Bundle(), bundleFile: master.BundlePath(dir, "bench")}
}

// peer is a simulated enrolled host.
type peer struct {
	name string
	cert []byte
	key  ed25519.PrivateKey
}

// peers makes n certificates named prefix0, prefix1, ...
func (l *lab) peers(tb testing.TB, prefix string, n int) []*peer {
	tb.Helper()
	out := make([]*peer, n)
	now := time.Now()
	base := binary.BigEndian.Uint32(l.bundle.Subnet.Addr().AsSlice())
	for i := range out {
		l.next++
		key, err := keys.NewSigning()
		if err != nil {
			tb.Fatal(err)
		}
		var wg keys.WGPublic
		binary.BigEndian.PutUint64(wg[:], uint64(l.next)) // never used for WireGuard here
		var ip [4]byte
		binary.BigEndian.PutUint32(ip[:], base+uint32(l.next)+1)
		c := &cert.Cert{Cluster: l.cluster, Name: fmt.Sprintf("%s%d", prefix, i), IP: netip.AddrFrom4(ip),
			WGKey: wg, SignKey: key.Public().(ed25519.PublicKey), Serial: uint64(1000 + l.next),
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)}
		if err := c.Sign(l.masterKey); err != nil {
			tb.Fatal(err)
		}
		out[i] = &peer{name: c.Name, cert: c.Encode(), key: key}
	}
	return out
}

// clientConfig is a broker client configuration for p.
func (l *lab) clientConfig(p *peer) client.Config {
	return client.Config{Bundle: l.bundle, Cert: p.cert, Key: p.key, Retry: 100 * time.Millisecond}
}

// brokerProc is pvc-broker running as a child process.
type brokerProc struct {
	Addr, Metrics string
	Key           ed25519.PublicKey
	cmd           *exec.Cmd
	log           string
	done          chan struct{}
}

// PID returns the broker's process ID.
func (p *brokerProc) PID() int { return p.cmd.Process.Pid }

// freeAddr returns a loopback TCP address free a moment ago.
func freeAddr(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// brokerKey creates the key of a broker's state dir (as pvc-broker does at
// its first start), so that a bundle can pin it before it runs.
func brokerKey(tb testing.TB, state string) ed25519.PublicKey {
	key, _, err := server.LoadOrCreateKey(state)
	if err != nil {
		tb.Fatal(err)
	}
	return key.Public().(ed25519.PublicKey)
}

// startBroker runs pvc-broker on loopback with the lab's bundle; it is
// ended (by its PID) at the end of the benchmark.
// startBroker starts pvc-broker on cpu (< 0: any) with procs Ps (GOMAXPROCS;
// 0: Go's default).
func startBroker(tb testing.TB, state, addr string, key ed25519.PublicKey, l *lab, cpu, procs int, extra ...string) *brokerProc {
	tb.Helper()
	p := &brokerProc{Addr: addr, Metrics: freeAddr(tb), Key: key, log: filepath.Join(state, "broker.log"), done: make(chan struct{})}
	args := append([]string{"--listen", addr, "--state", state, "--bundle", l.bundleFile, "--metrics", p.Metrics,
		"--max-sessions", "20000", "--conn-rate", "1000000"}, extra...)
	p.cmd = pinned(exec.Command(brokerBinary(tb), args...), cpu)
	if procs > 0 {
		p.cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(procs))
	}
	logf, err := os.Create(p.log)
	if err != nil {
		tb.Fatal(err)
	}
	defer logf.Close()
	p.cmd.Stderr = logf
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives the benchmark
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	tb.Cleanup(func() { p.stop() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, addr+"=") {
		p.stop()
		b, _ := os.ReadFile(p.log)
		tb.Fatalf("pvc-broker printed %q (%v), want its identity\n%s", line, err, b)
	}
	go io.Copy(io.Discard, stdout)
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(end) {
			tb.Fatalf("pvc-broker does not listen on %s", addr)
		}
	}
	return p
}

// stop ends the broker by its PID: SIGTERM, then SIGKILL after 5 s.
func (p *brokerProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// rss returns a process's resident set size in bytes, from /proc.
func rss(tb testing.TB, pid int) float64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb * 1024
		}
	}
	tb.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// metric returns the value of one series from the broker's metrics.
func (p *brokerProc) metric(tb testing.TB, series string) float64 {
	tb.Helper()
	resp, err := http.Get("http://" + p.Metrics + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	return 0
}

// simSession is a simulated authenticated peer session: TLS with the
// pinned broker key, Hello, Challenge, Auth with the peer's certificate
// and a signature over the nonce and the TLS exporter, Welcome — the
// handshake of the real client, without its goroutines and subscription.
func simSession(ctx context.Context, addr string, brokerKey ed25519.PublicKey, cluster string, p *peer) (*tls.Conn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, proto.ClientTLS(brokerKey))
	fail := func(err error) (*tls.Conn, error) {
		tc.Close()
		return nil, fmt.Errorf("session of %s: %w", p.name, err)
	}
	tc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail(err)
	}
	if err := proto.WriteMessage(tc, &proto.Hello{Version: proto.Version, Role: proto.RolePeer, Cluster: cluster}); err != nil {
		return fail(err)
	}
	m, err := proto.ReadMessage(tc)
	if err != nil {
		return fail(err)
	}
	ch, ok := m.(*proto.Challenge)
	if !ok {
		return fail(fmt.Errorf("got %s, want a challenge", m.Type()))
	}
	exp, err := proto.Exporter(tc.ConnectionState())
	if err != nil {
		return fail(err)
	}
	sig := ed25519.Sign(p.key, proto.AuthMessage(proto.RolePeer, cluster, ch.Nonce[:], brokerKey, exp))
	if err := proto.WriteMessage(tc, &proto.Auth{Credential: p.cert, Sig: sig}); err != nil {
		return fail(err)
	}
	if m, err = proto.ReadMessage(tc); err != nil {
		return fail(err)
	}
	if _, ok := m.(*proto.Welcome); !ok {
		return fail(fmt.Errorf("got %s, want welcome (%v)", m.Type(), m))
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

// pinger exchanges signals between two connected peers and records round
// trips: a sends to b, b answers, a receives the answer.
type pinger struct {
	a, b       *client.Client
	atA, atB   chan client.Signal
	lost       int
	roundLimit time.Duration
}

func newPinger(tb testing.TB, l *lab, run func(client.Config) *client.Client, pa, pb *peer, cache *client.VerifyCache) *pinger {
	pg := &pinger{atA: make(chan client.Signal, 16), atB: make(chan client.Signal, 16), roundLimit: 2 * time.Second}
	ca, cb := l.clientConfig(pa), l.clientConfig(pb)
	ca.VerifyCache, cb.VerifyCache = cache, cache
	ca.OnSignal = func(s client.Signal) {
		select {
		case pg.atA <- s:
		default:
		}
	}
	cb.OnSignal = func(s client.Signal) {
		select {
		case pg.atB <- s:
		default:
		}
	}
	pg.a, pg.b = run(ca), run(cb)
	return pg
}

// wait blocks until both see each other.
func (pg *pinger) wait(ctx context.Context, tb testing.TB) {
	for _, c := range []*client.Client{pg.a, pg.b} {
		if err := c.WaitConnected(ctx, 1); err != nil {
			tb.Fatal(err)
		}
	}
	if err := pg.a.View().Wait(ctx, func(v *client.View) bool { return v.Cert(pg.b.Name()) != nil }); err != nil {
		tb.Fatal(err)
	}
	if err := pg.b.View().Wait(ctx, func(v *client.View) bool { return v.Cert(pg.a.Name()) != nil }); err != nil {
		tb.Fatal(err)
	}
}

// round does one round trip; ok is false if a signal was lost.
func (pg *pinger) round(ctx context.Context, seq int) (time.Duration, bool) {
	payload := []byte(strconv.Itoa(seq))
	start := time.Now()
	timeout := time.After(pg.roundLimit)
	if pg.a.Signal(ctx, pg.b.Name(), proto.SignalICE, payload) != nil {
		return 0, false
	}
	for {
		select {
		case s := <-pg.atB:
			if string(s.Payload) != string(payload) {
				continue // a late answer of a lost round
			}
			if pg.b.Signal(ctx, pg.a.Name(), proto.SignalICE, payload) != nil {
				return 0, false
			}
		case s := <-pg.atA:
			if string(s.Payload) == string(payload) {
				return time.Since(start), true
			}
		case <-timeout:
			pg.lost++
			return 0, false
		case <-ctx.Done():
			return 0, false
		}
	}
}

// rounds does n round trips, pause apart.
func (pg *pinger) rounds(ctx context.Context, n int, pause time.Duration) []time.Duration {
	var out []time.Duration
	for i := range n {
		if d, ok := pg.round(ctx, i); ok {
			out = append(out, d)
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	return out
}

// percentile returns the p-th percentile (0 < p ≤ 100) of ds in ms.
func percentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	i = max(0, min(i, len(s)-1))
	return float64(s[i].Microseconds()) / 1000
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// runner starts broker clients that stop at the end of the benchmark.
type runner struct {
	tb     testing.TB
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newRunner(tb testing.TB) *runner {
	r := &runner{tb: tb}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	tb.Cleanup(r.stop)
	return r
}

func (r *runner) run(cfg client.Config) *client.Client {
	c, err := client.New(cfg)
	if err != nil {
		r.tb.Fatal(err)
	}
	r.wg.Add(1)
	go func() { defer r.wg.Done(); c.Run(r.ctx) }()
	return c
}

func (r *runner) stop() { r.cancel(); r.wg.Wait() }

// summaryRow is one line of a summary CSV.
type summaryRow struct {
	Metric, Unit string
	Value        float64
	Note         string
	Report       string // the unit of b.ReportMetric, if reported
}

// writeSummary writes bench/results/broker/NAME.csv.
func writeSummary(tb testing.TB, name string, rows []summaryRow) {
	tb.Helper()
	var out [][]string
	stamp := time.Now().UTC().Format(time.RFC3339)
	for _, r := range rows {
		out = append(out, []string{r.Metric, strconv.FormatFloat(r.Value, 'g', 6, 64), r.Unit, r.Note, stamp})
	}
	if *brokerFlag != "" { // another binary's figures do not replace this tree's
		name += "-" + filepath.Base(*brokerFlag)
	}
	path := filepath.Join(resultsDir, name+".csv")
	if err := os.MkdirAll(resultsDir, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := plot.WriteCSV(path, []string{"metric", "value", "unit", "note", "run_utc"}, out); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("wrote %s", path)
}

// logHealth logs what went wrong at the broker, if anything: sessions
// refused or closed on a full queue, signals and relay datagrams dropped.
func (p *brokerProc) logHealth(tb testing.TB) {
	tb.Helper()
	resp, err := http.Get("http://" + p.Metrics + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var bad []string
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "#") || strings.HasSuffix(line, " 0") {
			continue
		}
		for _, s := range []string{"refused", "overflow", "drops"} {
			if strings.Contains(line, s) {
				bad = append(bad, line)
			}
		}
	}
	if len(bad) > 0 {
		tb.Logf("broker metrics: %s", strings.Join(bad, "; "))
	}
	log, _ := os.ReadFile(p.log)
	counts := map[string]int{}
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") || strings.Contains(line, "failed") {
			msg := line
			if i := strings.Index(line, "msg="); i >= 0 {
				msg = line[i:min(len(line), i+60)]
			}
			counts[msg]++
		}
	}
	for msg, n := range counts {
		tb.Logf("broker log: %d× %s", n, msg)
	}
}

// cpuSeconds returns a process's user and system CPU time, from /proc
// (clock ticks of 1/100 s).
func cpuSeconds(tb testing.TB, pid int) float64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command name (which is in parentheses): state is
	// field 3, utime 14, stime 15.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

// procCounts returns a process's read and write system calls
// (/proc/PID/io syscr, syscw) and its threads' context switches, voluntary
// and not (/proc/PID/task/*/status), or zeros if they cannot be read.
func procCounts(pid int) (reads, writes, switches int64) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(l, ": ")
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case "syscr":
				reads = n
			case "syscw":
				writes = n
			}
		}
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				switches += n
			}
		}
	}
	return reads, writes, switches
}

// loadAvg returns the machine's 1-minute load average (other work on the
// machine shows in the figures).
func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

// niced makes cmd run at nice value n (0: cmd as it is). nice execs the
// command, so the PID is the command's.
func niced(cmd *exec.Cmd, n int) *exec.Cmd {
	if n == 0 {
		return cmd
	}
	p := exec.Command("nice", append([]string{"-n", strconv.Itoa(n), cmd.Path}, cmd.Args[1:]...)...)
	p.Env, p.Dir = cmd.Env, cmd.Dir
	return p
}

// pinned makes cmd run under taskset on CPU cpu; cpu < 0: cmd as it is.
// taskset execs the command, so the PID is the command's. Go sizes
// GOMAXPROCS from the CPUs the process may use: a pinned process runs one P.
func pinned(cmd *exec.Cmd, cpu int) *exec.Cmd {
	if cpu < 0 {
		return cmd
	}
	p := exec.Command("taskset", append([]string{"-c", strconv.Itoa(cpu), cmd.Path}, cmd.Args[1:]...)...)
	p.Env, p.Dir = cmd.Env, cmd.Dir
	return p
}
