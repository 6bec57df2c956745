package vcluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildBinaries builds pvcd and pvc-broker from this checkout into a new
// temporary directory and returns it; the caller removes it.
func BuildBinaries() (string, error) {
	dir, err := os.MkdirTemp("", "pvc-e2e-bin")
	if err != nil {
		return "", err
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	for pkg, out := range map[string]string{"pvcd": "pvcd", "broker": "pvc-broker"} {
		cmd := exec.Command(goTool, "build", "-o", filepath.Join(dir, out), "github.com/pvc-project/pvc/"+pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("build %s: %v\n%s", pkg, err, b)
		}
	}
	return dir, nil
}

// Main is a test package's TestMain: it builds the binaries into *bin, runs
// the tests, removes the binaries and exits with the tests' code.
func Main(m interface{ Run() int }, bin *string) {
	dir, err := BuildBinaries()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
