// Package name holds the naming rule shared by clusters and peers: a name
// is one DNS label (lowercase letters, digits and '-', 1 to 63 characters,
// neither starting nor ending with '-'), so that NAME.CLUSTER.pvc is a
// valid host name.
package name

import (
	"errors"
	"fmt"
)

// ErrBad is returned (wrapped) for a name that breaks the rule.
var ErrBad = errors.New("bad name")

// MaxLen is the longest name allowed (a DNS label).
const MaxLen = 63

// Check returns nil if s is a valid cluster or peer name.
func Check(s string) error {
	if len(s) == 0 {
		return fmt.Errorf("%w: empty", ErrBad)
	}
	if len(s) > MaxLen {
		return fmt.Errorf("%w: %q is %d characters, at most %d allowed", ErrBad, s, len(s), MaxLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-':
			if i == 0 || i == len(s)-1 {
				return fmt.Errorf("%w: %q starts or ends with '-'", ErrBad, s)
			}
		default:
			return fmt.Errorf("%w: %q: only lowercase letters, digits and '-' are allowed", ErrBad, s)
		}
	}
	return nil
}
