package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/pvc-project/pvc/internal/cli"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
	"github.com/pvc-project/pvc/security/name"
)

// runSub dispatches "pvcd GROUP SUB ..." to one of subs.
func runSub(ctx context.Context, group string, subs []cli.Verb, args []string, stdout, stderr io.Writer) error {
	names := make([]string, len(subs))
	for i, s := range subs {
		names[i] = s.Name
	}
	sort.Strings(names)
	if len(args) == 0 {
		return cli.Usagef("%s: missing subcommand (%s)", group, strings.Join(names, ", "))
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprintf(stdout, "Usage: pvcd %s SUBCOMMAND [ARGS] [FLAGS]\n\nSubcommands:\n", group)
		for _, s := range subs {
			fmt.Fprintf(stdout, "  %-8s %s\n", s.Name, s.Summary)
		}
		fmt.Fprintf(stdout, "\nRun 'pvcd %s SUBCOMMAND --help' for its flags.\n", group)
		return flag.ErrHelp
	}
	for _, s := range subs {
		if s.Name == args[0] {
			return s.Run(ctx, args[1:], stdout, stderr)
		}
	}
	return cli.Usagef("%s: unknown subcommand %q (want %s)", group, args[0], strings.Join(names, ", "))
}

// openMaster opens the master of --master-key. Problems with the file the
// user named (missing, loose mode, not a key, no state next to it) are bad
// input: exit status 2.
func openMaster(path string) (*master.Master, error) {
	if path == "" {
		return nil, cli.Usagef("--master-key FILE is required")
	}
	m, err := master.Open(path)
	if err != nil {
		if isInputProblem(err) {
			return nil, cli.Usagef("%v", err)
		}
		return nil, err
	}
	return m, nil
}

// isInputProblem reports whether err is about a file the user named.
func isInputProblem(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) ||
		errors.Is(err, keys.ErrLoosePermissions) || errors.Is(err, keys.ErrBadKeyFile) ||
		errors.Is(err, master.ErrNoState)
}

// readInput reads a file the user named; failures are bad input.
func readInput(what, path string) ([]byte, error) {
	if path == "" {
		return nil, cli.Usagef("%s FILE is required", what)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, cli.Usagef("%s: %v", what, err)
	}
	if !st.Mode().IsRegular() || st.Size() > 8<<20 {
		return nil, cli.Usagef("%s %s: not a regular file of at most 8 MiB", what, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, cli.Usagef("%s: %v", what, err)
	}
	return b, nil
}

// parseGroups checks --groups values.
func parseGroups(gs cli.Multi) ([]string, error) {
	for _, g := range gs {
		if err := name.Check(g); err != nil {
			return nil, cli.Usagef("--groups: %v", err)
		}
	}
	return []string(gs), nil
}

// noArgs refuses positional arguments.
func noArgs(pos []string) error {
	if len(pos) > 0 {
		return cli.Usagef("unexpected argument %q", pos[0])
	}
	return nil
}
