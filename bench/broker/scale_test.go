package broker

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/bundle"
)

// Sessions in BenchmarkSessions and peers in BenchmarkJoinStorm (issue 5's
// figures; smaller values help while investigating).
var (
	sessionsN        = flag.Int("sessions", 10000, "simulated peer sessions in BenchmarkSessions")
	stormN           = flag.Int("storm-peers", 1000, "peers in BenchmarkJoinStorm")
	stormRuns        = flag.Int("storm-runs", 3, "storms in BenchmarkJoinStorm (medians are reported)")
	stormProfSeconds = flag.Int("storm-profile-seconds", 8, "length of the broker's CPU profile from the start of a storm (with -storm-profile)")
	stormProf        = flag.String("storm-profile", "", "write CPU profiles of the broker and of the peers' process during each storm to `DIR` (broker-N.pprof, peers-N.pprof)")
	stormProcs       = flag.Int("storm-broker-procs", 0, "run pvc-broker with this GOMAXPROCS in BenchmarkJoinStorm (0: Go's default, one P per CPU)")
	stormNice        = flag.Int("storm-nice", 0, "run the storm's peers' process at this nice value (1-19: the 1,000 simulated hosts yield the CPU to pvc-broker and the two probes, as if they ran on machines of their own)")
	stormPin         = flag.Bool("storm-pin", false, "pin pvc-broker to CPU 0 and the storm's peers to CPU 1 (taskset), as if each had a host of its own; the two probes stay unpinned")
)

// BenchmarkSessions: one pvc-broker (a child process) holding 10,000
// authenticated peer sessions on loopback. Reports the broker's resident
// memory per session (VmRSS after minus before, over the sessions; the
// registry's 10,000 certificates included), the rate at which sessions
// were set up, and the signalling round trip p50/p99 between two further
// peers while the broker holds them. The simulated sessions authenticate
// like pvcd (TLS with the pinned key, signed challenge) but do not
// subscribe: 10,000 subscribers would each be sent the 10,000
// certificates, 3.5 GB through one process on both ends.
func BenchmarkSessions(b *testing.B) {
	raiseNoFile(b, uint64(*sessionsN)+1000)
	for range b.N {
		benchSessions(b, *sessionsN)
	}
}

func benchSessions(b *testing.B, n int) {
	state := b.TempDir()
	addr := freeAddr(b)
	key := brokerKey(b, state)
	l := newLab(b, []bundle.Broker{{Addr: addr, Key: key}})
	peers := l.peers(b, "p", n)
	probes := l.peers(b, "sig", 2)
	br := startBroker(b, state, addr, key, l, -1, 0)
	time.Sleep(500 * time.Millisecond)
	before := rss(b, br.PID())

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The simulated sessions ping every 10 s (the broker closes a session
	// silent for 45 s), from the moment they are set up.
	var cmu sync.Mutex
	conns := make([]*tls.Conn, 0, n)
	ping := func() {
		cmu.Lock()
		defer cmu.Unlock()
		for _, c := range conns {
			c.SetWriteDeadline(time.Now().Add(time.Second))
			proto.WriteMessage(c, &proto.Ping{Nonce: 1})
		}
	}
	stopPing := make(chan struct{})
	pinged := make(chan struct{})
	go func() {
		defer close(pinged)
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stopPing:
				return
			case <-t.C:
				ping()
			}
		}
	}()
	defer func() {
		close(stopPing)
		<-pinged
		for _, c := range conns {
			c.Close()
		}
	}()
	cpu0 := cpuSeconds(b, br.PID())
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range 32 { // handshakes in flight
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, err := simSession(ctx, addr, key, l.cluster, peers[i])
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				cmu.Lock()
				conns = append(conns, c)
				cmu.Unlock()
			}
		}()
	}
	wg.Wait()
	setup := time.Since(start)
	setupCPU := cpuSeconds(b, br.PID()) - cpu0
	if f := failed.Load(); f > int64(n/100) {
		b.Fatalf("%d of %d sessions failed; first: %v", f, n, firstErr.Load())
	} else if f > 0 {
		b.Errorf("%d of %d sessions failed (measuring the others); first: %v", f, n, firstErr.Load())
		n = len(conns)
	}
	ping()
	time.Sleep(time.Second)
	held := br.metric(b, `pvc_broker_sessions{role="peer"}`)
	after := rss(b, br.PID())
	perSession := (after - before) / float64(n)
	b.Logf("broker CPU for the set-up: %.2f s (%.0f µs per session)", setupCPU, setupCPU/float64(n)*1e6)
	b.Logf("%d sessions set up in %v (%.0f/s); broker RSS %.1f MB before, %.1f MB after: %.1f KiB per session",
		n, setup.Round(time.Millisecond), float64(n)/setup.Seconds(), before/1e6, after/1e6, perSession/1024)
	if int(held) != n {
		b.Errorf("the broker reports %v peer sessions, want %d", held, n)
	}

	// Signalling between two real clients while the broker holds them all.
	r := newRunner(b)
	cache := client.NewVerifyCache(0)
	pg := newPinger(b, l, r.run, probes[0], probes[1], cache)
	pg.wait(ctx, b)
	rtts := pg.rounds(ctx, 1000, time.Millisecond)
	p50, p99 := percentile(rtts, 50), percentile(rtts, 99)
	b.Logf("signalling with %d sessions held: p50 %.2f ms, p99 %.2f ms (%d rounds, %d lost)", n, p50, p99, len(rtts), pg.lost)
	r.stop()

	b.ReportMetric(perSession, "bytes/session")
	b.ReportMetric(float64(n)/setup.Seconds(), "sessions/s")
	b.ReportMetric(p50, "p50-ms")
	b.ReportMetric(p99, "p99-ms")
	writeSummary(b, "sessions", []summaryRow{
		{"sessions", "count", held, "authenticated peer sessions held by one pvc-broker on loopback", ""},
		{"rss_before", "MB", before / 1e6, "broker VmRSS with its cluster loaded, no session", ""},
		{"rss_after", "MB", after / 1e6, "broker VmRSS holding the sessions (and their certificates in the registry)", ""},
		{"rss_per_session", "KiB", perSession / 1024, "(after - before) / sessions", ""},
		{"setup_rate", "sessions/s", float64(n) / setup.Seconds(), fmt.Sprintf("TLS + signed challenge, 32 in flight, %d cores shared by both ends", runtime.NumCPU()), ""},
		{"setup_broker_cpu", "µs/session", setupCPU / float64(n) * 1e6, "pvc-broker's CPU time (user+system) per session set up", ""},
		{"signal_rtt_p50", "ms", p50, "signal a->b->a through the broker while it holds the sessions", ""},
		{"signal_rtt_p99", "ms", p99, fmt.Sprintf("target < 20 ms; %d rounds, %d lost", len(rtts), pg.lost), ""},
	})
}

// BenchmarkJoinStorm: 1,000 peers (real broker clients, in this process)
// connect at once to a fresh pvc-broker (a child process): time until
// every peer's subscription has seen every other. Two further peers
// exchange signals during the storm and after it (p50/p99). The simulated
// peers share one verification cache: each distinct certificate's
// signature is verified once in this process instead of once per peer
// (1,000,000 Ed25519 verifications on 2 cores otherwise); what one real
// host pays to verify the 1,000 certificates itself is measured separately
// (verify-ms/peer).
func BenchmarkJoinStorm(b *testing.B) {
	raiseNoFile(b, 3*uint64(*stormN))
	for range b.N {
		var runs [][]summaryRow
		for i := range *stormRuns {
			runs = append(runs, benchStorm(b, *stormN, i))
		}
		// Medians over the runs, each run's figure in the note.
		var out []summaryRow
		for i, r := range runs[0] {
			var vs []float64
			var each []string
			for _, run := range runs {
				vs = append(vs, run[i].Value)
				each = append(each, strconv.FormatFloat(run[i].Value, 'f', 2, 64))
			}
			r.Value = median(vs)
			r.Note = strings.TrimSpace(fmt.Sprintf("median of %d runs (%s). %s", len(runs), strings.Join(each, " / "), r.Note))
			out = append(out, r)
			if r.Report != "" {
				b.ReportMetric(r.Value, r.Report)
			}
		}
		writeSummary(b, "joinstorm", out)
	}
}

func benchStorm(b *testing.B, n, run int) []summaryRow {
	state := b.TempDir()
	addr := freeAddr(b)
	key := brokerKey(b, state)
	l := newLab(b, []bundle.Broker{{Addr: addr, Key: key}})
	peers := l.peers(b, "p", n)
	probes := l.peers(b, "sig", 2)
	var brokerProf, peersProf, pprofAddr string
	var extra []string
	if *stormProf != "" {
		if err := os.MkdirAll(*stormProf, 0o755); err != nil {
			b.Fatal(err)
		}
		brokerProf = filepath.Join(*stormProf, fmt.Sprintf("broker-%d.pprof", run))
		peersProf = filepath.Join(*stormProf, fmt.Sprintf("peers-%d.pprof", run))
		pprofAddr = freeAddr(b)
		extra = []string{"--pprof", pprofAddr}
	}
	brokerCore, peersCore := -1, -1
	if *stormPin {
		brokerCore, peersCore = 0, 1
	}
	br := startBroker(b, state, addr, key, l, brokerCore, *stormProcs, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	cache := client.NewVerifyCache(0)
	r := newRunner(b)
	pg := newPinger(b, l, r.run, probes[0], probes[1], cache)
	pg.wait(ctx, b)
	idle := pg.rounds(ctx, 200, time.Millisecond)
	before := rss(b, br.PID())

	child := startStormChild(b, l, peers, n+2, peersProf, peersCore) // every storm peer and the two probes

	// Signals every 5 ms during the storm.
	stormDone := make(chan struct{})
	var during []time.Duration
	var pgWG sync.WaitGroup
	pgWG.Add(1)
	go func() {
		defer pgWG.Done()
		for i := 0; ; i++ {
			select {
			case <-stormDone:
				return
			default:
			}
			if d, ok := pg.round(ctx, 1_000_000+i); ok {
				during = append(during, d)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	load := loadAvg()
	brokerCPU := cpuSeconds(b, br.PID())
	r0, w0, cs0 := procCounts(br.PID())
	childCPU := cpuSeconds(b, child.cmd.Process.Pid)
	var ds []time.Duration
	var last time.Duration
	profiled := make(chan struct{})
	if brokerProf != "" {
		go func() { defer close(profiled); fetchProfile(b, pprofAddr, brokerProf, *stormProfSeconds) }()
	} else {
		close(profiled)
	}
	start := time.Now()
	if _, err := io.WriteString(child.stdin, "go\n"); err != nil {
		b.Fatal(err)
	}
	for child.lines.Scan() {
		f := strings.Fields(child.lines.Text())
		if len(f) == 2 && f[0] == "done" {
			us, _ := strconv.Atoi(f[1])
			ds = append(ds, time.Duration(us)*time.Microsecond)
			continue
		}
		if len(f) == 2 && f[0] == "all" {
			us, _ := strconv.Atoi(f[1])
			last = time.Duration(us) * time.Microsecond
		}
		break
	}
	storm := time.Since(start)
	brokerCPU = cpuSeconds(b, br.PID()) - brokerCPU
	r1, w1, cs1 := procCounts(br.PID())
	selfCPU := cpuSeconds(b, child.cmd.Process.Pid) - childCPU
	close(stormDone)
	pgWG.Wait()
	complete := len(ds)
	b.Logf("views complete after: p10 %.0f ms, p50 %.0f ms, p90 %.0f ms, p99 %.0f ms, max %.0f ms",
		percentile(ds, 10), percentile(ds, 50), percentile(ds, 90), percentile(ds, 99), percentile(ds, 100))
	if complete < n {
		b.Errorf("only %d of %d peers saw every other within %v", complete, n, storm)
	}
	<-profiled
	after := rss(b, br.PID())
	br.logHealth(b)
	time.Sleep(200 * time.Millisecond)
	loaded := pg.rounds(ctx, 1000, time.Millisecond)
	r.stop()
	child.stop()

	// What one real host pays: verify the n+2 certificates into a fresh
	// view with no cache (median of 3).
	raws := make([][]byte, 0, n+2)
	for _, p := range append(append([]*peer{}, peers...), probes...) {
		raws = append(raws, p.cert)
	}
	var ver []float64
	for range 3 {
		v := client.NewView(l.bundle, nil)
		t0 := time.Now()
		if k, errs := v.AddAll(raws); k != len(raws) || len(errs) > 0 {
			b.Fatalf("fresh view took %d of %d certificates: %v", k, len(raws), errs)
		}
		ver = append(ver, float64(time.Since(t0).Microseconds())/1000)
	}
	verify := median(ver)

	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.Logf("join storm of %d peers: all saw all in %v; signalling idle p50 %.2f/p99 %.2f ms, during the storm p50 %.2f/p99 %.2f ms (%d rounds, %d lost), after p50 %.2f/p99 %.2f ms; a host verifies %d certificates in %.1f ms; broker RSS %.1f -> %.1f MB; CPU during the storm: broker %.2f s, the %d clients %.2f s; broker's system calls %d reads, %d writes, %d context switches; load average %s",
		n, last.Round(time.Millisecond), percentile(idle, 50), percentile(idle, 99), percentile(during, 50), percentile(during, 99), len(during), pg.lost,
		percentile(loaded, 50), percentile(loaded, 99), len(raws), verify, before/1e6, after/1e6, brokerCPU, n, selfCPU, r1-r0, w1-w0, cs1-cs0, load)
	return []summaryRow{
		{"peers", "count", float64(n), "broker clients connecting at once to a fresh pvc-broker (registry empty)", ""},
		{"peers_complete", "count", float64(complete), "peers whose view held every other peer", ""},
		{"storm_all_see_all", "ms", ms(last), fmt.Sprintf("target < 2000 ms; from the first dial to the last view complete; 1-min load average %s at the start%s", load, pinNote()), "ms/storm"},
		{"broker_cpu", "s", brokerCPU, "pvc-broker's CPU time (user+system) during the storm", "broker-cpu-s"},
		{"clients_cpu", "s", selfCPU, fmt.Sprintf("the %d simulated peers' CPU time (one child process, one shared verification cache) during the storm", n), ""},
		{"signal_rtt_idle_p50", "ms", percentile(idle, 50), "before the storm, 2 peers connected", ""},
		{"signal_rtt_idle_p99", "ms", percentile(idle, 99), "", ""},
		{"signal_rtt_storm_p50", "ms", percentile(during, 50), fmt.Sprintf("during the storm, %d rounds, %d lost", len(during), pg.lost), "p50-storm-ms"},
		{"signal_rtt_storm_p99", "ms", percentile(during, 99), "target < 20 ms", "p99-storm-ms"},
		{"signal_rtt_after_p50", "ms", percentile(loaded, 50), fmt.Sprintf("%d peers connected and subscribed", n+2), "p50-after-ms"},
		{"signal_rtt_after_p99", "ms", percentile(loaded, 99), "target < 20 ms", "p99-after-ms"},
		{"verify_per_host", "ms", verify, fmt.Sprintf("one host verifying the %d certificates (no cache), median of 3", len(raws)), "verify-ms/peer"},
		{"broker_rss_per_subscribed_peer", "KiB", (after - before) / float64(n) / 1024, "broker VmRSS growth over the storm / peers", ""},
	}
}

// fetchProfile writes a CPU profile of the broker (its --pprof endpoint)
// over the next seconds to file.
func fetchProfile(tb testing.TB, addr, file string, seconds int) {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, seconds))
	if err != nil {
		tb.Errorf("broker profile: %v", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		tb.Errorf("broker profile: %v", err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		tb.Errorf("broker profile: %v", err)
	}
}

// pinNote says, in a figure's note, that the storm ran pinned.
func pinNote() string {
	var s string
	if *stormPin {
		s += "; pvc-broker pinned to CPU 0 and the peers to CPU 1 (-storm-pin)"
	}
	if *stormProcs > 0 {
		s += fmt.Sprintf("; pvc-broker at GOMAXPROCS=%d (-storm-broker-procs)", *stormProcs)
	}
	if *stormNice != 0 {
		s += fmt.Sprintf("; the peers' process at nice %d (-storm-nice)", *stormNice)
	}
	return s
}
