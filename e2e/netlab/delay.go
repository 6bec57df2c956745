package netlab

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
)

// delayLine holds every packet that the namespace's raw-table NFQUEUE rules
// send it for a fixed delay, then lets it go, in arrival order; it drops a
// random fraction (loss) at once. It stands in for netem, which this
// machine's kernel lacks. The kernel keeps the
// packets; only their IDs and deadlines are held here.
type delayLine struct {
	ns    string
	delay time.Duration
	loss  float64
	nsf   *os.File
	nf    *nfqueue.Nfqueue

	mu      sync.Mutex
	pending []held // FIFO: deadlines grow with arrival
	wake    chan struct{}

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type held struct {
	id       uint32
	deadline time.Time
}

// maxHeld bounds the kernel's queue, like a router's buffer: packets beyond
// it are dropped (no fail-open: an undelayed packet would be a lie).
const maxHeld = 1 << 16

func startDelayLine(ns string, delay time.Duration, loss float64) (*delayLine, error) {
	f, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return nil, err
	}
	nf, err := nfqueue.Open(&nfqueue.Config{
		NetNS:        int(f.Fd()),
		NfQueue:      delayQueue,
		MaxQueueLen:  maxHeld,
		Copymode:     nfqueue.NfQnlCopyMeta, // IDs only: the packet stays in the kernel
		Flags:        nfqueue.NfQaCfgFlagGSO,
		AfFamily:     2, // AF_INET
		WriteTimeout: time.Second,
	})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("delay line in %s: %w", ns, err)
	}
	_ = nf.SetOption(netlink.NoENOBUFS, true)
	ctx, cancel := context.WithCancel(context.Background())
	d := &delayLine{ns: ns, delay: delay, loss: loss, nsf: f, nf: nf, wake: make(chan struct{}, 1), cancel: cancel}
	err = nf.RegisterWithErrorFunc(ctx, d.arrive, func(e error) int {
		if ctx.Err() != nil {
			return 1
		}
		return 0 // ENOBUFS and the like: keep going
	})
	if err != nil {
		cancel()
		nf.Close()
		f.Close()
		return nil, fmt.Errorf("delay line in %s: %w", ns, err)
	}
	d.wg.Add(1)
	go d.release(ctx)
	return d, nil
}

func (d *delayLine) arrive(a nfqueue.Attribute) int {
	if a.PacketID == nil {
		return 0
	}
	if d.loss > 0 && rand.Float64() < d.loss {
		_ = d.nf.SetVerdict(*a.PacketID, nfqueue.NfDrop)
		return 0
	}
	d.mu.Lock()
	d.pending = append(d.pending, held{id: *a.PacketID, deadline: time.Now().Add(d.delay)})
	first := len(d.pending) == 1
	d.mu.Unlock()
	if first {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
	return 0
}

// release lets packets go when their deadline passes, all that are due at
// once with one batch verdict (IDs grow, so "accept up to ID" is exact).
func (d *delayLine) release(ctx context.Context) {
	defer d.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		d.mu.Lock()
		now := time.Now()
		n := 0
		for n < len(d.pending) && !d.pending[n].deadline.After(now) {
			n++
		}
		var last uint32
		if n > 0 {
			last = d.pending[n-1].id
			d.pending = append(d.pending[:0], d.pending[n:]...)
		}
		var next time.Duration = time.Hour
		if len(d.pending) > 0 {
			next = time.Until(d.pending[0].deadline)
		}
		d.mu.Unlock()
		if n > 0 {
			_ = d.nf.SetVerdictBatch(last, nfqueue.NfAccept)
			continue
		}
		timer.Reset(next)
		select {
		case <-ctx.Done():
			return
		case <-d.wake: // Reset at the loop's top discards a stale expiry (Go 1.23 timers)
		case <-timer.C:
		}
	}
}

// Close stops the delay line. Packets still held are dropped by the kernel
// when the queue goes away.
func (d *delayLine) Close() error {
	d.cancel()
	d.wg.Wait()
	return errors.Join(d.nf.Close(), d.nsf.Close())
}
