package rootfs

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// OverlayAt finds the overlay mounted at dir (a CRI runtime's container
// rootfs) and returns its layers as a Layout: Lower is overlayfs' lowerdir
// list. Mounts are read from mountinfo, the host's when this process
// shares its mount namespace.
func OverlayAt(dir, mountinfo string) (Layout, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return Layout{}, err
	}
	defer f.Close()
	var found *Layout
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 3 || unescape(fields[4]) != dir {
			continue
		}
		if tail[0] != "overlay" {
			found = nil // a later mount over it wins
			continue
		}
		l := Layout{Merged: dir}
		for _, o := range strings.Split(tail[2], ",") {
			k, v, _ := strings.Cut(o, "=")
			switch k {
			case "lowerdir":
				l.Lower = v
			case "lowerdir+": // layers added one by one (fsconfig)
				if l.Lower != "" {
					l.Lower += ":"
				}
				l.Lower += v
			case "upperdir":
				l.Upper = v
			case "workdir":
				l.Work = v
			}
		}
		found = &l
	}
	if err := sc.Err(); err != nil {
		return Layout{}, err
	}
	if found == nil || found.Upper == "" {
		return Layout{}, fmt.Errorf("no writable overlay is mounted at %s", dir)
	}
	return *found, nil
}

func unescape(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}
