package certify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Comparator decides whether two results are the same result.
type Comparator interface {
	Equal(ctx context.Context, a, b []byte) (bool, error)
}

// ByteEqual is the default Comparator: results are equal when their bytes are.
type ByteEqual struct{}

// Equal implements Comparator.
func (ByteEqual) Equal(_ context.Context, a, b []byte) (bool, error) { return bytes.Equal(a, b), nil }

// CommandComparator runs a user command to compare two results: argv plus
// the paths of two files holding them. Exit status 0 means equal, 1 means
// different, anything else is an error (the comparison itself failed).
type CommandComparator struct {
	Argv   []string
	TmpDir string // where the two files are written; "" means os.TempDir()
}

// ParseCommandComparator splits a command line on spaces (no quoting) into
// a CommandComparator.
func ParseCommandComparator(cmdline string) (*CommandComparator, error) {
	argv := strings.Fields(cmdline)
	if len(argv) == 0 {
		return nil, errors.New("compare command: empty")
	}
	return &CommandComparator{Argv: argv}, nil
}

// Equal implements Comparator.
func (c *CommandComparator) Equal(ctx context.Context, a, b []byte) (bool, error) {
	dir, err := os.MkdirTemp(c.TmpDir, "pvc-compare-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(dir)
	fa, fb := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if err := os.WriteFile(fa, a, 0o600); err != nil {
		return false, err
	}
	if err := os.WriteFile(fb, b, 0o600); err != nil {
		return false, err
	}
	args := append(append([]string(nil), c.Argv[1:]...), fa, fb)
	cmd := exec.CommandContext(ctx, c.Argv[0], args...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return false, nil
	default:
		return false, fmt.Errorf("compare command %s: %w: %s", c.Argv[0], err, strings.TrimSpace(string(out)))
	}
}
