package hostdns

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/pvc-project/pvc/security/name"
)

// Errors of the hosts-file parser.
var (
	ErrMalformed = errors.New("malformed pvc block in hosts file")
	ErrBadHost   = errors.New("bad host entry")
)

const (
	beginPrefix = "# BEGIN pvc "
	beginSuffix = " (managed by pvcd; do not edit)"
	endPrefix   = "# END pvc "
)

// BeginMarker and EndMarker return the lines that delimit cluster's block.
func BeginMarker(cluster string) string { return beginPrefix + cluster + beginSuffix }

// EndMarker returns the line that ends cluster's block.
func EndMarker(cluster string) string { return endPrefix + cluster }

// Host is one line of a block: "ADDR NAME.DOMAIN NAME".
type Host struct {
	Name string     // one DNS label
	Addr netip.Addr // the peer's virtual address
}

// segment is a run of lines of a hosts file, kept byte for byte.
type segment struct {
	text    string
	cluster string // "" for lines outside every block
}

// File is a parsed hosts file: the lines outside pvc blocks, untouched,
// and the blocks. Bytes returns exactly the parsed input until SetBlock or
// RemoveBlock changes a block; lines outside blocks are never changed.
type File struct {
	segs []segment
}

// Parse splits a hosts file into lines outside blocks and pvc blocks. A
// block starts at a BEGIN marker line and ends at the END marker line of
// the same cluster; trailing blanks and CR are ignored when matching
// markers. A BEGIN without its END, or a marker of another cluster inside a
// block, is ErrMalformed: the file is then not changed, because where the
// block ends cannot be known. An END without a BEGIN is kept as a (empty)
// block of its cluster, so that the next SetBlock or RemoveBlock of that
// cluster drops it.
func Parse(data []byte) (*File, error) {
	f := &File{}
	var (
		outside strings.Builder
		inBlock string // cluster of the open block
		block   strings.Builder
		lineNo  int
		beginNo int
	)
	flushOutside := func() {
		if outside.Len() > 0 {
			f.segs = append(f.segs, segment{text: outside.String()})
			outside.Reset()
		}
	}
	for len(data) > 0 {
		lineNo++
		i := bytes.IndexByte(data, '\n')
		var line []byte
		if i < 0 {
			line, data = data, nil
		} else {
			line, data = data[:i+1], data[i+1:]
		}
		begin, end := marker(line)
		if inBlock != "" {
			block.Write(line)
			switch {
			case end == inBlock:
				f.segs = append(f.segs, segment{text: block.String(), cluster: inBlock})
				block.Reset()
				inBlock = ""
			case begin != "" || end != "":
				return nil, fmt.Errorf("%w: line %d: marker of %q inside the block of %q (line %d)",
					ErrMalformed, lineNo, begin+end, inBlock, beginNo)
			}
			continue
		}
		switch {
		case begin != "":
			flushOutside()
			inBlock, beginNo = begin, lineNo
			block.Write(line)
		case end != "":
			flushOutside()
			f.segs = append(f.segs, segment{text: string(line), cluster: end})
		default:
			outside.Write(line)
		}
	}
	if inBlock != "" {
		return nil, fmt.Errorf("%w: line %d: block of %q has no end marker", ErrMalformed, beginNo, inBlock)
	}
	flushOutside()
	return f, nil
}

// marker returns the cluster named by a BEGIN or END marker line.
func marker(line []byte) (begin, end string) {
	s := strings.TrimRight(string(line), " \t\r\n")
	if c, ok := strings.CutPrefix(s, beginPrefix); ok {
		if c, ok = strings.CutSuffix(c, beginSuffix); ok && validCluster(c) {
			return c, ""
		}
		return "", ""
	}
	if c, ok := strings.CutPrefix(s, endPrefix); ok && validCluster(c) {
		return "", c
	}
	return "", ""
}

// validCluster reports whether c can be the cluster of a marker: one
// token, so that markers parse back.
func validCluster(c string) bool {
	return c != "" && !strings.ContainsAny(c, " \t\r\n")
}

// Bytes returns the file's content.
func (f *File) Bytes() []byte {
	var b bytes.Buffer
	for _, s := range f.segs {
		b.WriteString(s.text)
	}
	return b.Bytes()
}

// Clusters returns the clusters that have a block, in file order.
func (f *File) Clusters() []string {
	var out []string
	for _, s := range f.segs {
		if s.cluster != "" && !slices.Contains(out, s.cluster) {
			out = append(out, s.cluster)
		}
	}
	return out
}

// Block returns the hosts listed in cluster's blocks, the lines that are
// not "ADDR NAME.DOMAIN NAME" skipped, and whether a block exists.
func (f *File) Block(cluster string) ([]Host, bool) {
	var out []Host
	found := false
	for _, s := range f.segs {
		if s.cluster != cluster {
			continue
		}
		found = true
		for line := range strings.Lines(s.text) {
			fs := strings.Fields(line)
			if len(fs) != 3 || strings.HasPrefix(fs[0], "#") {
				continue
			}
			a, err := netip.ParseAddr(fs[0])
			if err != nil || !strings.HasPrefix(fs[1], fs[2]+".") {
				continue
			}
			out = append(out, Host{Name: fs[2], Addr: a})
		}
	}
	return out, found
}

// SetBlock replaces cluster's block by one that lists hosts under domain
// (e.g. "mycluster.pvc"), sorted by name. The block takes the place of the
// cluster's first block; further blocks and stray end markers of the
// cluster are dropped; without a block, it is appended at the end.
func (f *File) SetBlock(cluster, domain string, hosts []Host) error {
	text, err := RenderBlock(cluster, domain, hosts)
	if err != nil {
		return err
	}
	segs := make([]segment, 0, len(f.segs)+1)
	placed := false
	for _, s := range f.segs {
		if s.cluster != cluster {
			segs = append(segs, s)
			continue
		}
		if !placed {
			segs = append(segs, segment{text: text, cluster: cluster})
			placed = true
		}
	}
	if !placed {
		if n := len(segs); n > 0 && !strings.HasSuffix(segs[n-1].text, "\n") {
			// The last line has no newline: end it, or our marker would
			// join it.
			segs[n-1].text += "\n"
		}
		segs = append(segs, segment{text: text, cluster: cluster})
	}
	f.segs = segs
	return nil
}

// RemoveBlock drops cluster's blocks and reports whether there were any.
func (f *File) RemoveBlock(cluster string) bool {
	n := len(f.segs)
	f.segs = slices.DeleteFunc(f.segs, func(s segment) bool { return s.cluster == cluster })
	return len(f.segs) != n
}

// RenderBlock returns the text of cluster's block listing hosts under
// domain, markers included, sorted by name.
func RenderBlock(cluster, domain string, hosts []Host) (string, error) {
	if err := name.Check(cluster); err != nil {
		return "", fmt.Errorf("%w: cluster: %v", ErrBadHost, err)
	}
	domain = strings.TrimSuffix(domain, ".")
	if domain == "" {
		return "", fmt.Errorf("%w: empty domain", ErrBadHost)
	}
	for _, l := range strings.Split(domain, ".") {
		if err := name.Check(l); err != nil {
			return "", fmt.Errorf("%w: domain %q: %v", ErrBadHost, domain, err)
		}
	}
	hs := slices.Clone(hosts)
	slices.SortFunc(hs, func(a, b Host) int { return strings.Compare(a.Name, b.Name) })
	var b strings.Builder
	b.WriteString(BeginMarker(cluster) + "\n")
	for i, h := range hs {
		if err := name.Check(h.Name); err != nil {
			return "", fmt.Errorf("%w: %v", ErrBadHost, err)
		}
		if !h.Addr.IsValid() || h.Addr.Zone() != "" {
			return "", fmt.Errorf("%w: %s: address %v", ErrBadHost, h.Name, h.Addr)
		}
		if i > 0 && hs[i-1].Name == h.Name {
			return "", fmt.Errorf("%w: %s twice", ErrBadHost, h.Name)
		}
		fmt.Fprintf(&b, "%s %s.%s %s\n", h.Addr, h.Name, domain, h.Name)
	}
	b.WriteString(EndMarker(cluster) + "\n")
	return b.String(), nil
}
