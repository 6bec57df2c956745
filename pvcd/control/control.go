// Package control is pvcd's local control API: an HTTP/JSON service on a
// unix socket in the daemon's state directory (mode 0600: only the
// daemon's user may use it), and the client that `pvcd status`, `pvcd
// peers`, `pvcd ping` and `pvcd down` use. The daemon implements Backend.
//
//	GET  /v1/status           Status
//	GET  /v1/peers            []Peer
//	POST /v1/ping?peer=NAME   PingResult
//	POST /v1/down             {} (the daemon then shuts down)
//
// Errors come back as {"error": "..."} with a 4xx/5xx status.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// SocketName is the control socket's file name in the state directory.
const SocketName = "pvcd.sock"

// SocketPath returns the control socket's path for a state directory.
func SocketPath(stateDir string) string { return filepath.Join(stateDir, SocketName) }

// Status is the daemon's overall state.
type Status struct {
	Cluster   string       `json:"cluster"`
	Name      string       `json:"name"`
	VirtualIP netip.Addr   `json:"virtual_ip"`
	Subnet    netip.Prefix `json:"subnet"`
	Interface string       `json:"interface"`
	Port      uint16       `json:"port"` // WireGuard's UDP port, and the TCP techniques' port
	MTU       int          `json:"mtu"`  // the TUN device's
	// Oversize counts batches of datagrams that the kernel refused as too
	// large for their path, sent again fragmented: the MTU is too large.
	Oversize uint64         `json:"oversize_batches"`
	Domain   string         `json:"domain"`
	Since    time.Time      `json:"since"`
	Brokers  []BrokerStatus `json:"brokers"`
	Peers    int            `json:"peers"` // peers known (certified)
	Active   int            `json:"active"`
	Version  string         `json:"version"`
}

// BrokerStatus is one broker session.
type BrokerStatus struct {
	Addr      string `json:"addr"`
	Connected bool   `json:"connected"`
	Observed  string `json:"observed,omitempty"` // our address as the broker sees it
	Error     string `json:"error,omitempty"`
}

// Peer is one peer as `pvcd peers` shows it (ARCHITECTURE §7).
type Peer struct {
	Name          string     `json:"name"`
	VirtualIP     netip.Addr `json:"virtual_ip"`
	Path          string     `json:"path"`           // direct, upnp, punched, ttcp, tcp-punch, relay, none
	Remote        string     `json:"remote"`         // remote endpoint of the path
	LastHandshake time.Time  `json:"last_handshake"` // zero: never
	BytesIn       uint64     `json:"bytes_in"`       // received from the peer
	BytesOut      uint64     `json:"bytes_out"`      // sent to the peer
	Why           string     `json:"why,omitempty"`  // why better paths failed
}

// PingResult is the answer to a ping over the overlay.
type PingResult struct {
	Peer string        `json:"peer"`
	IP   netip.Addr    `json:"ip"`
	Path string        `json:"path"`
	RTT  time.Duration `json:"rtt_ns"`
}

// Backend is what the daemon provides to the control API.
type Backend interface {
	Status() Status
	Peers() []Peer
	// Ping sends an echo to the peer over the overlay and reports the path.
	Ping(ctx context.Context, peer string) (PingResult, error)
	// Down asks the daemon to shut down cleanly; it returns at once.
	Down()
}

// ErrUnknownPeer is returned (wrapped) by a Backend's Ping for a name that
// is not a peer of the cluster; the API maps it to 404.
var ErrUnknownPeer = errors.New("unknown peer")

// Server serves the API on the control socket.
type Server struct {
	path string
	ln   net.Listener
	srv  *http.Server
	wg   sync.WaitGroup
}

// Listen creates the control socket in stateDir (replacing a stale one left
// by a crash, but refusing if a live daemon answers on it).
func Listen(stateDir string, b Backend, log *slog.Logger) (*Server, error) {
	path := SocketPath(stateDir)
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("another pvcd is running with state dir %s (its control socket %s answers)", stateDir, path)
	}
	_ = os.Remove(path) // stale socket of a crashed daemon
	// The state directory is 0700 (the daemon makes it so): no one else
	// can reach the socket in the instant before the chmod below.
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	s := &Server{path: path, ln: ln}
	s.srv = &http.Server{Handler: newHandler(b, log), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second}
	return s, nil
}

// Run serves until ctx ends, then closes the socket and removes its file.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		errc <- s.srv.Serve(s.ln)
	}()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shut, cancel := context.WithTimeout(context.Background(), 2*time.Second) // ctx is already done
	defer cancel()
	_ = s.srv.Shutdown(shut)
	s.wg.Wait()
	_ = os.Remove(s.path)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Path returns the socket's path.
func (s *Server) Path() string { return s.path }

func newHandler(b Backend, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, b.Status()) })
	mux.HandleFunc("GET /v1/peers", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, b.Peers()) })
	mux.HandleFunc("POST /v1/ping", func(w http.ResponseWriter, r *http.Request) {
		peer := r.URL.Query().Get("peer")
		if peer == "" {
			writeErr(w, http.StatusBadRequest, errors.New("ping: which peer? (peer=NAME)"))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		res, err := b.Ping(ctx, peer)
		switch {
		case errors.Is(err, ErrUnknownPeer):
			writeErr(w, http.StatusNotFound, err)
		case err != nil:
			writeErr(w, http.StatusGatewayTimeout, err)
		default:
			writeJSON(w, http.StatusOK, res)
		}
	})
	mux.HandleFunc("POST /v1/down", func(w http.ResponseWriter, r *http.Request) {
		if log != nil {
			log.Info("shutdown requested over the control socket")
		}
		writeJSON(w, http.StatusOK, struct{}{})
		b.Down()
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
