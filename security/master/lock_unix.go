//go:build unix

package master

import (
	"fmt"
	"os"
	"syscall"
)

// lockState takes an exclusive lock on the state dir so that two pvcd
// processes (the master daemon and a CLI verb) never interleave their
// read-modify-write of the state files. It returns the unlock function.
func lockState(dir string) (func(), error) {
	f, err := os.OpenFile(dir+"/lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock master state: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock master state: %w", err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
