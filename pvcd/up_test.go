package main

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/pvc-project/pvc/internal/cli"
)

func TestUpFlagsBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{}, "--cluster NAME is required"},
		{[]string{"--cluster", "Bad Name"}, "--cluster"},
		{[]string{"--cluster", "lab", "--name", "x y"}, "--name"},
		{[]string{"--cluster", "lab", "--join", "tok"}, "--join needs --name"},
		{[]string{"--cluster", "lab", "--join", "garbage", "--name", "h"}, "--join"},
		{[]string{"--cluster", "lab", "--port", "70000"}, "--port 70000"},
		{[]string{"--cluster", "lab", "--interface", "a-very-long-interface-name"}, "--interface"},
		{[]string{"--cluster", "lab", "--mtu", "500"}, "--mtu 500: want 576 to 65535"},
		{[]string{"--cluster", "lab", "--mtu", "1e3"}, "invalid value \"1e3\" for flag -mtu"},
		{[]string{"--cluster", "lab", "--paths", "ice,carrier-pigeon"}, `unknown technique "carrier-pigeon"`},
		{[]string{"--cluster", "lab", "--state-dir", ""}, "--state-dir"},
		{[]string{"--cluster", "lab", "extra"}, "extra"},
	} {
		_, err := parseUp(c.args, io.Discard, io.Discard)
		var ue *cli.UsageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("pvcd up %q: err = %v, want a usage error with %q", c.args, err, c.want)
		}
	}
}

func TestUpPaths(t *testing.T) {
	cfg, err := parseUp([]string{"--cluster", "lab", "--paths", "ice, tcp"}, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Techniques.String(); got != "ice,tcp" {
		t.Fatalf("techniques %q", got)
	}
	cfg, err = parseUp([]string{"--cluster", "lab"}, io.Discard, io.Discard)
	if err != nil || cfg.Techniques.String() != "upnp,ice,tcp,ttcp,tcp-punch" {
		t.Fatalf("default techniques %q, %v", cfg.Techniques, err)
	}
	cfg, err = parseUp([]string{"--cluster", "lab", "--paths", "none"}, io.Discard, io.Discard)
	if err != nil || cfg.Techniques.String() != "none" {
		t.Fatalf("none: %q, %v", cfg.Techniques, err)
	}
}
