package certify

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"time"
	"unicode"
)

// Evidence is why a host was blacklisted.
type Evidence struct {
	Time time.Time `json:"time"`
	// Kind is "spot-check" (the host's answer to a job with a known answer
	// was wrong) or "vote" (its result lost a decided vote).
	Kind     string `json:"kind"`
	Job      string `json:"job"`             // the job's name
	Task     string `json:"task"`            // the task the host ran
	Expected string `json:"expected_sha256"` // hex SHA-256 of the correct (or accepted) result
	Got      string `json:"got_sha256"`      // hex SHA-256 of the host's result
	Excerpt  string `json:"excerpt"`         // the first bytes of the host's result
}

// Evidence kinds.
const (
	EvidenceSpotCheck = "spot-check"
	EvidenceVote      = "vote"
)

// HostRecord is what the certifier knows about one host.
type HostRecord struct {
	ChecksPassed int       `json:"checks_passed"`
	ChecksFailed int       `json:"checks_failed"`
	Accepted     int       `json:"accepted"`    // results of this host that were accepted
	CPUSeconds   float64   `json:"cpu_seconds"` // credits: CPU seconds of accepted work
	Blacklisted  bool      `json:"blacklisted"`
	Evidence     *Evidence `json:"evidence,omitempty"` // set iff Blacklisted
}

// State is the certifier's persistent memory across runs: blacklist,
// spot-check record (credibility) and credits, per host.
type State struct {
	Version int                    `json:"version"`
	Hosts   map[string]*HostRecord `json:"hosts"`
}

// StateVersion is the version of the state file format.
const StateVersion = 1

// ErrState is wrapped by every error about a state file's content.
var ErrState = errors.New("bad state file")

// NewState returns an empty state.
func NewState() *State { return &State{Version: StateVersion, Hosts: map[string]*HostRecord{}} }

// Host returns the record of host, creating it.
func (s *State) Host(host string) *HostRecord {
	r := s.Hosts[host]
	if r == nil {
		r = &HostRecord{}
		s.Hosts[host] = r
	}
	return r
}

// Blacklisted returns the blacklisted hosts, sorted.
func (s *State) Blacklisted() []string {
	var out []string
	for h, r := range s.Hosts {
		if r.Blacklisted {
			out = append(out, h)
		}
	}
	sort.Strings(out)
	return out
}

// Names returns every host's name, sorted.
func (s *State) Names() []string {
	out := make([]string, 0, len(s.Hosts))
	for h := range s.Hosts {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

// ValidHostName reports whether s can be a host name in the state: 1 to
// 255 printable characters without spaces or commas (Slurm's --exclude
// list separator).
func ValidHostName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) || r == ',' {
			return false
		}
	}
	return true
}

// Validate checks the state's invariants.
func (s *State) Validate() error {
	if s.Version != StateVersion {
		return fmt.Errorf("%w: version %d (want %d)", ErrState, s.Version, StateVersion)
	}
	if s.Hosts == nil {
		return fmt.Errorf("%w: no hosts object", ErrState)
	}
	for h, r := range s.Hosts {
		if !ValidHostName(h) {
			return fmt.Errorf("%w: host name %q", ErrState, h)
		}
		if r == nil {
			return fmt.Errorf("%w: host %s: null record", ErrState, h)
		}
		if r.ChecksPassed < 0 || r.ChecksFailed < 0 || r.Accepted < 0 {
			return fmt.Errorf("%w: host %s: negative count", ErrState, h)
		}
		if r.CPUSeconds < 0 || math.IsNaN(r.CPUSeconds) || math.IsInf(r.CPUSeconds, 0) {
			return fmt.Errorf("%w: host %s: cpu_seconds %v", ErrState, h, r.CPUSeconds)
		}
		if r.Blacklisted != (r.Evidence != nil) {
			return fmt.Errorf("%w: host %s: a blacklisted host needs evidence, and only it", ErrState, h)
		}
		if e := r.Evidence; e != nil && e.Kind != EvidenceSpotCheck && e.Kind != EvidenceVote {
			return fmt.Errorf("%w: host %s: evidence kind %q", ErrState, h, e.Kind)
		}
	}
	return nil
}

// ParseState parses and validates a state file.
func ParseState(data []byte) (*State, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s State
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrState, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrState)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// Marshal encodes the state as indented JSON.
func (s *State) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// LoadState reads the state at path; a missing file is an empty state.
func LoadState(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return NewState(), nil
	}
	if err != nil {
		return nil, err
	}
	s, err := ParseState(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Save writes the state to path atomically (a temporary file renamed).
func (s *State) Save(path string) error {
	data, err := s.Marshal()
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}
