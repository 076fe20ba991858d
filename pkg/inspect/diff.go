package inspect

import (
	"fmt"
	"sort"
	"strings"
)

// Difference is what changed from checkpoint A to checkpoint B. Like
// Report, its JSON form is stable.
type Difference struct {
	A string `json:"a"`
	B string `json:"b"`

	ProcessesAdded   []string `json:"processes_added"`
	ProcessesRemoved []string `json:"processes_removed"`
	FilesAdded       []string `json:"files_added"`
	FilesRemoved     []string `json:"files_removed"`
	SocketsAdded     []string `json:"sockets_added"`
	SocketsRemoved   []string `json:"sockets_removed"`

	Memory MemoryChange `json:"memory"`

	// Rootfs paths the container added to, changed in or dropped from its
	// writable layer between A and B, and those it deleted.
	RootfsAdded   []string `json:"rootfs_added"`
	RootfsChanged []string `json:"rootfs_changed"`
	RootfsDropped []string `json:"rootfs_dropped"`
	RootfsDeleted []string `json:"rootfs_deleted"`
}

// MemoryChange is the size of the page images, in bytes.
type MemoryChange struct {
	A     int64 `json:"a"`
	B     int64 `json:"b"`
	Delta int64 `json:"delta"`
}

// Compare computes the difference between two full reports (processes
// with command lines, files and sockets; rootfs).
func Compare(a, b *Report) *Difference {
	d := &Difference{A: a.Container, B: b.Container, RootfsAdded: []string{}, RootfsChanged: []string{},
		RootfsDropped: []string{}, RootfsDeleted: []string{}}
	d.ProcessesAdded, d.ProcessesRemoved = setDiff(keys(a.Processes, procKey), keys(b.Processes, procKey))
	d.FilesAdded, d.FilesRemoved = setDiff(keys(a.Processes, fileKeys), keys(b.Processes, fileKeys))
	d.SocketsAdded, d.SocketsRemoved = setDiff(keys(a.Processes, sockKeys), keys(b.Processes, sockKeys))
	d.Memory = MemoryChange{A: a.Sizes.Memory, B: b.Sizes.Memory, Delta: b.Sizes.Memory - a.Sizes.Memory}
	if a.Rootfs != nil && b.Rootfs != nil {
		ra, rb := map[string]RootfsEntry{}, map[string]RootfsEntry{}
		for _, e := range a.Rootfs.Changed {
			ra[e.Path] = e
		}
		for _, e := range b.Rootfs.Changed {
			rb[e.Path] = e
			old, ok := ra[e.Path]
			switch {
			case !ok:
				d.RootfsAdded = append(d.RootfsAdded, e.Path)
			case e.Type != "dir" && (old.Size != e.Size || !old.MTime.Equal(e.MTime) || old.Mode != e.Mode || old.Link != e.Link):
				d.RootfsChanged = append(d.RootfsChanged, e.Path)
			}
		}
		for p := range ra {
			if _, ok := rb[p]; !ok {
				d.RootfsDropped = append(d.RootfsDropped, p)
			}
		}
		d.RootfsDeleted, _ = setDiff(a.Rootfs.Deleted, b.Rootfs.Deleted)
		sort.Strings(d.RootfsAdded)
		sort.Strings(d.RootfsChanged)
		sort.Strings(d.RootfsDropped)
	}
	return d
}

func procKey(p *Process) []string {
	cmd := p.Comm
	if len(p.Cmdline) > 0 {
		cmd = strings.Join(p.Cmdline, " ")
	}
	return []string{fmt.Sprintf("pid %d: %s", p.Pid, cmd)}
}

func fileKeys(p *Process) []string {
	var out []string
	for _, f := range p.Files {
		out = append(out, fmt.Sprintf("pid %d fd %s: %s", p.Pid, f.Fd, f.Path))
	}
	return out
}

func sockKeys(p *Process) []string {
	var out []string
	for _, s := range p.Sockets {
		out = append(out, fmt.Sprintf("pid %d fd %d: %s %s %s %s -> %s", p.Pid, s.Fd, s.Family, s.Type, s.State, s.Src, s.Dst))
	}
	return out
}

func keys(ps []*Process, f func(*Process) []string) []string {
	var out []string
	for _, p := range ps {
		out = append(out, f(p)...)
	}
	return out
}

// setDiff returns what b has that a lacks, and what a has that b lacks,
// sorted; never nil, so JSON shows [] rather than null.
func setDiff(a, b []string) (added, removed []string) {
	in := func(xs []string) map[string]bool {
		m := map[string]bool{}
		for _, x := range xs {
			m[x] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	added, removed = []string{}, []string{}
	for x := range mb {
		if !ma[x] {
			added = append(added, x)
		}
	}
	for x := range ma {
		if !mb[x] {
			removed = append(removed, x)
		}
	}
	sort.Strings(added)
	sort.Strings(removed)
	return added, removed
}
