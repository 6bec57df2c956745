package local

import (
	"context"
	"strings"
	"testing"

	"github.com/pvc-project/pvc/certify"
)

func TestRunPlacesDistinctExcludesAndWraps(t *testing.T) {
	s, err := New(Config{Hosts: HostNames(4), Wrap: map[string][]string{"local03": {"env", "SABOTEUR=1"}}, Parallel: 2})
	if err != nil {
		t.Fatal(err)
	}
	var tasks []certify.Task
	for i := range 3 {
		tasks = append(tasks, certify.Task{ID: "t" + string(rune('0'+i)), Group: "g", Command: `echo "$PVC_HOST ${SABOTEUR:-0}"`, Exclude: []string{"local01"}})
	}
	tasks = append(tasks, certify.Task{ID: "bad", Command: "exit 4"})
	res, err := s.Run(context.Background(), tasks)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range res[:3] {
		if r.Err != nil || r.Host == "local01" || seen[r.Host] {
			t.Errorf("%+v: want a distinct host other than local01", r)
		}
		seen[r.Host] = true
		want := r.Host + " 0\n"
		if r.Host == "local03" {
			want = "local03 1\n"
		}
		if string(r.Output) != want {
			t.Errorf("%s on %s: output %q, want %q", r.Task, r.Host, r.Output, want)
		}
	}
	if res[3].Err == nil || !strings.Contains(res[3].Err.Error(), "exit status 4") || res[3].Output != nil {
		t.Errorf("failing task: %+v", res[3])
	}
	res, err = s.Run(context.Background(), []certify.Task{{ID: "x", Command: "true", Exclude: HostNames(4)}})
	if err != nil || res[0].Err == nil {
		t.Errorf("every host excluded: %+v %v", res, err)
	}
}

func TestNewRejects(t *testing.T) {
	for _, c := range []Config{
		{},
		{Hosts: []string{"a", "a"}},
		{Hosts: []string{"a b"}},
		{Hosts: []string{"a"}, Wrap: map[string][]string{"b": {"cat"}}},
		{Hosts: []string{"a"}, Wrap: map[string][]string{"a": {}}},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("%+v: want an error", c)
		}
	}
}
