package upnp

import (
	"fmt"
	"hash/fnv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// descPrefix starts every description the Mapper writes.
const descPrefix = "pvc"

// MaxDescription is the longest description the Mapper writes: miniupnpd
// returns at most 63 bytes of a description when listing (and some
// routers store fewer), so a longer one would never match on the next start.
const MaxDescription = 63

// Description returns the port-mapping description that marks mappings of
// peer in cluster: "pvc CLUSTER PEER". It names both so that two peers behind
// one router never delete each other's mappings. Whitespace and control
// characters inside the names become '_'. A description longer than
// MaxDescription is cut and ends in "~" and 8 hex digits of a hash of the
// whole, so it stays unique and the same on every run.
func Description(cluster, peer string) string {
	d := descPrefix + " " + clean(cluster) + " " + clean(peer)
	if len(d) <= MaxDescription {
		return d
	}
	h := fnv.New32a()
	h.Write([]byte(d))
	suffix := fmt.Sprintf("~%08x", h.Sum32())
	cut := d[:MaxDescription-len(suffix)]
	for len(cut) > 0 && !utf8.ValidString(cut) {
		cut = cut[:len(cut)-1]
	}
	return cut + suffix
}

// ParseDescription returns the cluster and peer of a description written by
// Description; ok is false for anything else (other programs' mappings). A
// cut description returns the cut peer name, hash suffix included.
func ParseDescription(desc string) (cluster, peer string, ok bool) {
	f := strings.Split(desc, " ")
	if len(f) != 3 || f[0] != descPrefix || f[1] == "" || f[2] == "" {
		return "", "", false
	}
	return f[1], f[2], true
}

func clean(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == unicode.ReplacementChar {
			return '_'
		}
		return r
	}, s)
}
