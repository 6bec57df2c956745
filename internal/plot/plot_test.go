package plot

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWritePNGAndCSV(t *testing.T) {
	dir := t.TempDir()
	c := Chart{Title: "t", XLabel: "bytes", YLabel: "Mbit/s", LogX: true, Series: []Series{
		{Name: "a", X: []float64{1, 10, 100}, Y: []float64{1, 2, 3}},
		{Name: "b", X: []float64{1, 10, 100}, Y: []float64{2, 3, 4}},
	}}
	png := filepath.Join(dir, "sub", "c.png")
	if err := c.WritePNG(png); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(png)
	if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Fatalf("not a PNG: %v", err)
	}
	csvPath := filepath.Join(dir, "c.csv")
	if err := WriteCSV(csvPath, []string{"x", "y"}, [][]string{{"1", "2"}}); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(csvPath)
	if string(b) != "x,y\n1,2\n" {
		t.Fatalf("csv = %q", b)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	for name, c := range map[string]Chart{
		"no series": {},
		"mismatch":  {Series: []Series{{Name: "a", X: []float64{1}, Y: nil}}},
		"log zero":  {LogX: true, Series: []Series{{Name: "a", X: []float64{0}, Y: []float64{1}}}},
	} {
		if err := c.WritePNG(filepath.Join(dir, "x.png")); err == nil || !strings.Contains(err.Error(), "plot:") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	if err := WriteCSV(filepath.Join(dir, "x.csv"), []string{"a", "b"}, [][]string{{"1"}}); err == nil {
		t.Error("short row accepted")
	}
}
