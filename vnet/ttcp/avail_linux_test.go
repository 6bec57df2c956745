//go:build linux

package ttcp

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAvailableWithoutCapabilities drops CAP_NET_ADMIN and CAP_NET_RAW from
// one thread's effective set (capabilities are per thread in Linux) and
// checks that Available, NewServer and Dial refuse there, naming both.
func TestAvailableWithoutCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: capabilities to drop")
	}
	if err := Available(); err != nil {
		t.Fatalf("as root: %v", err)
	}
	errc := make(chan error, 3)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			errc <- nil
			errc <- nil
			return
		}
		data[0].Effective &^= 1<<unix.CAP_NET_ADMIN | 1<<unix.CAP_NET_RAW
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- err
			errc <- nil
			errc <- nil
			return
		}
		errc <- Available()
		_, err := NewServer(ServerConfig{})
		errc <- err
		_, err = (&Dialer{}).Dial(t.Context(), linuxSYN.Dst, nil)
		errc <- err
	}()
	for _, what := range []string{"Available", "NewServer", "Dial"} {
		err := <-errc
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "CAP_NET_ADMIN") || !strings.Contains(err.Error(), "CAP_NET_RAW") {
			t.Errorf("%s without capabilities: %v", what, err)
		}
	}
	if err := Available(); err != nil {
		t.Errorf("other threads lost their capabilities: %v", err)
	}
}

// TestAvailableInUnprivilegedProcess runs this test binary again with no
// capabilities at all (setpriv clears the bounding set, so even root gets
// none across exec) and checks what Available says there.
func TestAvailableInUnprivilegedProcess(t *testing.T) {
	if os.Getenv("PVC_TTCP_HELPER") == "1" {
		if err := Available(); err != nil {
			os.Stdout.WriteString("UNAVAILABLE: " + err.Error() + "\n")
		} else {
			os.Stdout.WriteString("AVAILABLE\n")
		}
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: setpriv drops capabilities that root has")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	cmd := exec.Command(setpriv, "--inh-caps=-all", "--bounding-set=-all", "--", os.Args[0], "-test.run=^TestAvailableInUnprivilegedProcess$")
	cmd.Env = append(os.Environ(), "PVC_TTCP_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.Contains(string(out), "UNAVAILABLE: traversing-TCP unavailable: missing CAP_NET_ADMIN, CAP_NET_RAW") {
		t.Errorf("helper said: %s", out)
	}
}
