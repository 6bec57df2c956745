package certify

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Job is one unit of work: a shell command whose standard output is its
// result.
type Job struct {
	Name    string
	Command string // run with sh -c in Dir
	Dir     string // working directory ("" means the scheduler's own)
	// For spot-check jobs (declared with "check"): the file holding the
	// known answer (relative paths are relative to the job file) and, once
	// loaded, the answer itself.
	ExpectFile string
	Expect     []byte
}

// JobFile is a parsed job file: the jobs to certify and the spot-check
// jobs with known answers.
type JobFile struct {
	Jobs   []Job
	Checks []Job
}

// ErrJobFile is wrapped by every error about a job file's content.
var ErrJobFile = errors.New("bad job file")

// Limits of a job file.
const (
	MaxJobFileSize = 16 << 20
	maxLine        = 64 << 10
	maxNameLen     = 64
)

var jobNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ValidJobName reports whether s can name a job: a letter or digit, then
// letters, digits, '.', '_' or '-', at most 64 characters.
func ValidJobName(s string) bool { return len(s) <= maxNameLen && jobNameRE.MatchString(s) }

// ParseJobFile parses a job file:
//
//	# a comment; blank lines are ignored
//	job   NAME COMMAND...
//	check NAME EXPECTFILE COMMAND...
//
// A job line runs COMMAND (the rest of the line, a shell command) and
// certifies its standard output. A check line declares a spot-check job
// whose correct output is the content of EXPECTFILE. Names are unique.
// Expected answers are not read here: see LoadJobFile.
func ParseJobFile(data []byte) (*JobFile, error) {
	bad := func(line int, format string, args ...any) error {
		return fmt.Errorf("%w: line %d: %s", ErrJobFile, line, fmt.Sprintf(format, args...))
	}
	if len(data) > MaxJobFileSize {
		return nil, fmt.Errorf("%w: %d bytes: at most %d", ErrJobFile, len(data), MaxJobFileSize)
	}
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%w: not UTF-8 text", ErrJobFile)
	}
	if bytes.IndexByte(data, 0) >= 0 {
		return nil, fmt.Errorf("%w: contains a NUL byte", ErrJobFile)
	}
	jf := &JobFile{}
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(strings.TrimSuffix(sc.Text(), "\r"))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kind, rest := cut(line)
		var j Job
		switch kind {
		case "job":
			j.Name, j.Command = cut(rest)
		case "check":
			j.Name, rest = cut(rest)
			j.ExpectFile, j.Command = cut(rest)
			if j.ExpectFile == "" {
				return nil, bad(n, "check %s: missing EXPECTFILE and COMMAND (want: check NAME EXPECTFILE COMMAND)", j.Name)
			}
		default:
			return nil, bad(n, "unknown keyword %q (want job or check)", kind)
		}
		if !ValidJobName(j.Name) {
			return nil, bad(n, "job name %q: want a letter or digit, then letters, digits, '.', '_' or '-' (at most %d)", j.Name, maxNameLen)
		}
		if prev, dup := seen[j.Name]; dup {
			return nil, bad(n, "job name %q already used on line %d", j.Name, prev)
		}
		seen[j.Name] = n
		if j.Command == "" {
			return nil, bad(n, "%s %s: missing COMMAND", kind, j.Name)
		}
		if strings.ContainsFunc(j.Command, func(r rune) bool { return r < ' ' && r != '\t' }) {
			return nil, bad(n, "%s %s: control character in the command", kind, j.Name)
		}
		if kind == "job" {
			jf.Jobs = append(jf.Jobs, j)
		} else {
			jf.Checks = append(jf.Checks, j)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, bad(n+1, "%v", err)
	}
	if len(jf.Jobs) == 0 {
		return nil, fmt.Errorf("%w: no job lines", ErrJobFile)
	}
	return jf, nil
}

// String writes the job file back in its own syntax.
func (jf *JobFile) String() string {
	var b strings.Builder
	for _, j := range jf.Jobs {
		fmt.Fprintf(&b, "job %s %s\n", j.Name, j.Command)
	}
	for _, j := range jf.Checks {
		fmt.Fprintf(&b, "check %s %s %s\n", j.Name, j.ExpectFile, j.Command)
	}
	return b.String()
}

// cut splits off the first whitespace-separated word.
func cut(s string) (word, rest string) {
	s = strings.TrimLeft(s, " \t")
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimSpace(s[i+1:])
}

// LoadJobFile reads and parses the job file at path, sets every job's Dir
// to the file's directory (absolute) and reads the expected answers of the
// check jobs.
func LoadJobFile(path string) (*JobFile, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrJobFile, path)
	}
	if st.Size() > MaxJobFileSize {
		return nil, fmt.Errorf("%w: %s: %d bytes: at most %d", ErrJobFile, path, st.Size(), MaxJobFileSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	jf, err := ParseJobFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	for i := range jf.Jobs {
		jf.Jobs[i].Dir = dir
	}
	for i := range jf.Checks {
		c := &jf.Checks[i]
		c.Dir = dir
		p := c.ExpectFile
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		c.Expect, err = os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w: check %s: expected answer: %v", path, ErrJobFile, c.Name, err)
		}
	}
	return jf, nil
}
