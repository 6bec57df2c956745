package name

import (
	"errors"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"a", true}, {"node-01", true}, {strings.Repeat("a", 63), true}, {"0abc", true},
		{"", false}, {strings.Repeat("a", 64), false}, {"Node", false}, {"-a", false}, {"a-", false},
		{"a.b", false}, {"a_b", false}, {"a b", false}, {"é", false},
	} {
		err := Check(tc.in)
		if got := err == nil; got != tc.ok {
			t.Errorf("Check(%q) = %v, want ok=%v", tc.in, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBad) {
			t.Errorf("Check(%q) = %v, want ErrBad", tc.in, err)
		}
	}
}
