package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
)

// ErrNotRunning is returned when no daemon answers on the socket.
var ErrNotRunning = errors.New("pvcd is not running")

// Client talks to a daemon's control socket.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client for the daemon whose state directory is
// stateDir. It does not connect until a call.
func NewClient(stateDir string) *Client {
	path := SocketPath(stateDir)
	// One connection per request: a client is short-lived (a CLI verb,
	// a test's poll), and idle keep-alive connections would pile up on
	// both sides.
	return &Client{path: path, http: &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://pvcd"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if _, serr := os.Stat(c.path); serr != nil {
			return fmt.Errorf("%w (no control socket at %s)", ErrNotRunning, c.path)
		}
		return fmt.Errorf("%w (control socket %s does not answer: %v)", ErrNotRunning, c.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("control API: %s", resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, "/v1/status", &s)
}

// Peers returns the daemon's peers.
func (c *Client) Peers(ctx context.Context) ([]Peer, error) {
	var p []Peer
	return p, c.do(ctx, http.MethodGet, "/v1/peers", &p)
}

// Ping pings a peer over the overlay.
func (c *Client) Ping(ctx context.Context, peer string) (PingResult, error) {
	var r PingResult
	return r, c.do(ctx, http.MethodPost, "/v1/ping?peer="+url.QueryEscape(peer), &r)
}

// Down asks the daemon to shut down.
func (c *Client) Down(ctx context.Context) error {
	var v struct{}
	return c.do(ctx, http.MethodPost, "/v1/down", &v)
}
