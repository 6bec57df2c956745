package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// icmpEcho sends ICMP echo requests from src to dst over the overlay
// (through the kernel, the TUN and WireGuard, like any application) until
// one is answered or ctx ends, and returns the round trip.
func icmpEcho(ctx context.Context, src, dst netip.Addr) (time.Duration, error) {
	c, err := icmp.ListenPacket("ip4:icmp", src.String())
	if err != nil {
		return 0, fmt.Errorf("ICMP socket: %w", err)
	}
	defer c.Close()
	id := os.Getpid() & 0xffff
	buf := make([]byte, 1500)
	for seq := 1; ; seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("pvcd ping")}}
		wb, err := msg.Marshal(nil)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		if _, err := c.WriteTo(wb, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return 0, err
		}
		deadline := start.Add(time.Second)
		if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
			deadline = dl
		}
		_ = c.SetReadDeadline(deadline)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break // timed out: send the next one
			}
			rm, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || rm.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			if e, ok := rm.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq && from.String() == dst.String() {
				return time.Since(start), nil
			}
		}
		if ctx.Err() != nil {
			return 0, errNoReply
		}
	}
}
