// Package cli holds the small command-line framework shared by pvcd and
// pvc-broker: verbs as functions, flags that may follow positional
// arguments, and the mapping of errors to exit statuses (2 for bad input,
// 1 for a failure while doing the work).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Exit statuses.
const (
	ExitOK      = 0
	ExitFailure = 1 // the work failed
	ExitUsage   = 2 // the input was bad
)

// UsageError is bad input from the user: an unknown verb or flag, a missing
// or malformed argument. It maps to exit status 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Usagef returns a *UsageError with a formatted message.
func Usagef(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// IsUsage reports whether err is (or wraps) a *UsageError.
func IsUsage(err error) bool {
	var u *UsageError
	return errors.As(err, &u)
}

// Verb is one subcommand.
type Verb struct {
	Name    string
	Summary string // one line for the verb list
	// Run does the work. args excludes the verb name itself.
	Run func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// Program is a command made of verbs.
type Program struct {
	Name    string // e.g. "pvcd"
	Summary string // one paragraph printed at the top of --help
	Version string // printed by --version
	Verbs   []Verb
	// Default, if set, runs when the first argument is a flag rather than a
	// verb (pvc-broker has no verbs: its flags follow the program name).
	Default *Verb
}

// Main runs the program and returns the exit status. Errors are printed to
// stderr as one line prefixed with the program name.
func (p *Program) Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := p.run(ctx, args, stdout, stderr)
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, flag.ErrHelp):
		return ExitOK
	case IsUsage(err):
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", p.Name)
		return ExitUsage
	default:
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
		return ExitFailure
	}
}

func (p *Program) run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		if p.Default != nil {
			return p.Default.Run(ctx, args, stdout, stderr)
		}
		p.usage(stderr)
		return Usagef("missing command")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 && args[0] == "help" {
			if v := p.find(args[1]); v != nil {
				return v.Run(ctx, []string{"--help"}, stdout, stderr)
			}
			return Usagef("unknown command %q", args[1])
		}
		p.usage(stdout)
		return nil
	case "-version", "--version", "version":
		fmt.Fprintln(stdout, p.Version)
		return nil
	}
	if v := p.find(args[0]); v != nil {
		return v.Run(ctx, args[1:], stdout, stderr)
	}
	if p.Default != nil && strings.HasPrefix(args[0], "-") {
		return p.Default.Run(ctx, args, stdout, stderr)
	}
	return Usagef("unknown command %q", args[0])
}

func (p *Program) find(name string) *Verb {
	for i := range p.Verbs {
		if p.Verbs[i].Name == name {
			return &p.Verbs[i]
		}
	}
	return nil
}

func (p *Program) usage(w io.Writer) {
	fmt.Fprintf(w, "%s\n\nUsage:\n  %s COMMAND [ARGS] [FLAGS]\n\nCommands:\n", strings.TrimSpace(p.Summary), p.Name)
	verbs := append([]Verb(nil), p.Verbs...)
	sort.Slice(verbs, func(i, j int) bool { return verbs[i].Name < verbs[j].Name })
	for _, v := range verbs {
		fmt.Fprintf(w, "  %-14s %s\n", v.Name, v.Summary)
	}
	fmt.Fprintf(w, "\nRun '%s COMMAND --help' for the flags of a command; '%s --version' for the version.\n", p.Name, p.Name)
}

// NewFlagSet returns a flag set that reports errors instead of exiting and
// prints its usage (usage line, then the flags) to w on --help.
func NewFlagSet(name, usageLine, description string, w io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors come back as UsageError; --help prints below
	fs.Usage = func() {
		fmt.Fprintf(w, "Usage: %s\n", usageLine)
		if description != "" {
			fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(description))
		}
		fmt.Fprintln(w, "\nFlags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// Parse parses args with fs, allowing flags and positional arguments in any
// order ("init NAME --out DIR" and "init --out DIR NAME" alike); "--" ends
// flag parsing. It returns the positional arguments. A bad flag becomes a
// *UsageError; --help prints the usage and returns flag.ErrHelp.
func Parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.Usage()
				return nil, flag.ErrHelp
			}
			return nil, &UsageError{Msg: fmt.Sprintf("%s: %v", fs.Name(), err)}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		// fs.Parse stops at the first non-flag or after "--".
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// Multi is a flag.Value that collects a flag given several times, and also
// splits comma-separated values ("--broker a --broker b" or "--broker a,b").
type Multi []string

func (m *Multi) String() string { return strings.Join(*m, ",") }

// Set implements flag.Value.
func (m *Multi) Set(s string) error {
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return errors.New("empty value")
		}
		*m = append(*m, part)
	}
	return nil
}
