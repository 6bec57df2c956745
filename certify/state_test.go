package certify_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/certify"
)

func TestStateRoundTrip(t *testing.T) {
	st := certify.NewState()
	st.Host("n1").ChecksPassed = 3
	st.Host("n1").CPUSeconds = 12.5
	st.Host("n1").Accepted = 7
	n2 := st.Host("n2")
	n2.Blacklisted, n2.ChecksFailed = true, 1
	n2.Evidence = &certify.Evidence{Time: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC), Kind: certify.EvidenceSpotCheck,
		Job: "k1", Task: "t000004", Expected: "aa", Got: "bb", Excerpt: "wrong\n"}
	path := filepath.Join(t.TempDir(), "state.json")
	if err := st.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := certify.LoadState(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, st) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, st)
	}
	if bl := got.Blacklisted(); len(bl) != 1 || bl[0] != "n2" {
		t.Errorf("blacklisted %v", bl)
	}
	if empty, err := certify.LoadState(filepath.Join(t.TempDir(), "missing.json")); err != nil || len(empty.Hosts) != 0 {
		t.Errorf("missing state file: %v %+v; want an empty state", err, empty)
	}
}

func TestParseStateRejects(t *testing.T) {
	ev := `"evidence":{"time":"2026-11-23T12:00:00Z","kind":"spot-check","job":"k","task":"t","expected_sha256":"","got_sha256":"","excerpt":""}`
	for _, c := range []struct{ name, in, msg string }{
		{"not JSON", "hello", "invalid"},
		{"empty", "", "EOF"},
		{"array", "[]", "cannot unmarshal"},
		{"wrong version", `{"version":2,"hosts":{}}`, "version 2"},
		{"no hosts", `{"version":1}`, "no hosts"},
		{"unknown field", `{"version":1,"hosts":{},"extra":1}`, "unknown field"},
		{"trailing data", `{"version":1,"hosts":{}} {}`, "after the JSON"},
		{"null record", `{"version":1,"hosts":{"n1":null}}`, "null record"},
		{"bad host name", `{"version":1,"hosts":{"a b":{}}}`, "host name"},
		{"comma in host name", `{"version":1,"hosts":{"a,b":{}}}`, "host name"},
		{"negative count", `{"version":1,"hosts":{"n1":{"checks_passed":-1}}}`, "negative"},
		{"negative credits", `{"version":1,"hosts":{"n1":{"cpu_seconds":-1}}}`, "cpu_seconds"},
		{"blacklisted without evidence", `{"version":1,"hosts":{"n1":{"blacklisted":true}}}`, "evidence"},
		{"evidence without blacklist", `{"version":1,"hosts":{"n1":{` + ev + `}}}`, "evidence"},
		{"bad evidence kind", `{"version":1,"hosts":{"n1":{"blacklisted":true,` + strings.Replace(ev, "spot-check", "rumour", 1) + `}}}`, "kind"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := certify.ParseState([]byte(c.in))
			if err == nil || !errors.Is(err, certify.ErrState) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err %v: want ErrState saying %q", err, c.msg)
			}
		})
	}
	path := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(path, []byte("{"), 0o600)
	if _, err := certify.LoadState(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("LoadState of a bad file: %v: want an error naming the file", err)
	}
}

// FuzzParseState: the parser never panics, and a state it accepts
// encodes and parses back to itself.
func FuzzParseState(f *testing.F) {
	st := certify.NewState()
	st.Host("n1").ChecksPassed = 2
	st.Host("n2").Blacklisted = true
	st.Host("n2").Evidence = &certify.Evidence{Kind: certify.EvidenceVote, Job: "j"}
	seed, _ := st.Marshal()
	f.Add(seed)
	f.Add([]byte(`{"version":1,"hosts":{}}`))
	f.Add([]byte(`{"version":1,"hosts":{"n1":{"cpu_seconds":1e308}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := certify.ParseState(data)
		if err != nil {
			if !errors.Is(err, certify.ErrState) {
				t.Fatalf("error %v does not wrap ErrState", err)
			}
			return
		}
		b, err := s.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		again, err := certify.ParseState(b)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", b, err)
		}
		b2, err := again.Marshal()
		if err != nil || string(b) != string(b2) {
			t.Fatalf("round trip: %s != %s (%v)", b, b2, err)
		}
	})
}
