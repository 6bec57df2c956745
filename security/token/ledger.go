package token

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/pvc-project/pvc/security/keys"
)

// Ledger counts the uses of each token on the master. It is a JSON file
// rewritten atomically on every change; entries of expired tokens are
// dropped. A Ledger is not safe for concurrent use: the master serialises
// access (see security/master).
type Ledger struct {
	path    string
	entries map[string]*ledgerEntry
}

type ledgerEntry struct {
	Used    uint32    `json:"used"`
	Expires time.Time `json:"expires"`
}

// LoadLedger reads the ledger at path; a missing file is an empty ledger.
func LoadLedger(path string) (*Ledger, error) {
	l := &Ledger{path: path, entries: map[string]*ledgerEntry{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return nil, fmt.Errorf("token ledger: %w", err)
	}
	if err := json.Unmarshal(b, &l.entries); err != nil {
		return nil, fmt.Errorf("token ledger %s: %w", path, err)
	}
	return l, nil
}

// Used returns how many times the token with this ID was used.
func (l *Ledger) Used(id string) uint32 {
	if e := l.entries[id]; e != nil {
		return e.Used
	}
	return 0
}

// Use records one use of t and saves the ledger. It refuses the use
// (ErrUsedUp) when t has been used t.Uses times already. The caller has
// verified t.
func (l *Ledger) Use(t *Token, now time.Time) error {
	e := l.entries[t.ID]
	if e == nil {
		e = &ledgerEntry{Expires: t.Expires}
	}
	if e.Used >= t.Uses {
		return fmt.Errorf("token %s: %w: all %d uses taken", t.ID, ErrUsedUp, t.Uses)
	}
	e.Used++
	l.entries[t.ID] = e
	for id, x := range l.entries {
		if !now.Before(x.Expires) && id != t.ID {
			delete(l.entries, id)
		}
	}
	b, err := json.MarshalIndent(l.entries, "", "  ")
	if err != nil {
		return fmt.Errorf("token ledger: %w", err)
	}
	if err := keys.WriteFileAtomic(l.path, append(b, '\n'), 0o600); err != nil {
		e.Used--
		return fmt.Errorf("token ledger: %w", err)
	}
	return nil
}
