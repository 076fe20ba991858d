package inspect

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// width is the terminal width the tree output keeps to.
const width = 80

// WriteTree prints a report for people: a header, then each section asked
// for, processes as an indented tree with their files and sockets.
func WriteTree(w io.Writer, r *Report) {
	fmt.Fprintf(w, "%s (image %s)\n", r.Container, r.Image)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "  %-13s %s\n", k+":", fit(v, width-16))
		}
	}
	row("engine", r.Engine)
	row("runtime", r.Runtime)
	row("criu", r.CRIUVersion)
	row("created", when(r.Created))
	row("checkpointed", when(r.Checkpointed))
	row("sizes", fmt.Sprintf("archive %s, memory %s, rootfs diff %s",
		human(r.Sizes.Archive), human(r.Sizes.Memory), human(r.Sizes.RootfsDiff)))
	if len(r.Processes) > 0 {
		fmt.Fprintln(w, "processes:")
		children := map[uint32][]*Process{}
		pids := map[uint32]bool{}
		for _, p := range r.Processes {
			pids[p.Pid] = true
		}
		var roots []*Process
		for _, p := range r.Processes {
			if pids[p.Ppid] {
				children[p.Ppid] = append(children[p.Ppid], p)
			} else {
				roots = append(roots, p)
			}
		}
		var walk func(p *Process, indent string)
		walk = func(p *Process, indent string) {
			cmd := p.Comm
			if len(p.Cmdline) > 0 {
				cmd = strings.Join(p.Cmdline, " ")
			}
			fmt.Fprintln(w, fit(fmt.Sprintf("%s%d %s", indent, p.Pid, cmd), width))
			for _, e := range p.Env {
				fmt.Fprintln(w, fit(indent+"    env "+e, width))
			}
			for _, f := range p.Files {
				fmt.Fprintln(w, fit(fmt.Sprintf("%s    fd %-4s %s", indent, f.Fd, f.Path), width))
			}
			for _, s := range p.Sockets {
				peer := ""
				if s.Dst != "" {
					peer = " -> " + s.Dst
				}
				fmt.Fprintln(w, fit(fmt.Sprintf("%s    sk %-4d %s %s %s %s%s", indent, s.Fd, s.Family, s.Type, s.State, s.Src, peer), width))
			}
			for _, c := range children[p.Pid] {
				walk(c, indent+"  ")
			}
		}
		for _, p := range roots {
			walk(p, "  ")
		}
	}
	if len(r.Mounts) > 0 {
		fmt.Fprintln(w, "mounts:")
		for _, m := range r.Mounts {
			fmt.Fprintln(w, fit(fmt.Sprintf("  %s %s %s", m.Mountpoint, m.Fstype, m.Source), width))
		}
	}
	if s := r.Stats; s != nil {
		fmt.Fprintf(w, "stats:\n  frozen %s, memory dump %s (write %s), pages %d of %d scanned\n",
			us(s.FrozenTime), us(s.MemdumpTime), us(s.MemwriteTime), s.PagesWritten, s.PagesScanned)
	}
	if r.Rootfs != nil {
		fmt.Fprintf(w, "rootfs: %d changed, %d deleted\n", len(r.Rootfs.Changed), len(r.Rootfs.Deleted))
		for _, e := range r.Rootfs.Changed {
			fmt.Fprintln(w, fit(fmt.Sprintf("  %-7s %8s %s", e.Type, human(e.Size), e.Path), width))
		}
		for _, d := range r.Rootfs.Deleted {
			fmt.Fprintln(w, fit("  deleted          "+d, width))
		}
	}
	if r.Matches != nil {
		fmt.Fprintf(w, "memory matches: %d\n", len(r.Matches))
		for _, m := range r.Matches {
			fmt.Fprintln(w, fit(fmt.Sprintf("  pid %d at %s (%s): %s", m.Pid, m.Address, m.Mapping, m.Context), width))
		}
	}
}

// WriteDiff prints a difference for people.
func WriteDiff(w io.Writer, d *Difference) {
	section := func(title string, added, removed []string) {
		if len(added)+len(removed) == 0 {
			return
		}
		fmt.Fprintln(w, title+":")
		for _, x := range added {
			fmt.Fprintln(w, fit("  + "+x, width))
		}
		for _, x := range removed {
			fmt.Fprintln(w, fit("  - "+x, width))
		}
	}
	section("processes", d.ProcessesAdded, d.ProcessesRemoved)
	section("files", d.FilesAdded, d.FilesRemoved)
	section("sockets", d.SocketsAdded, d.SocketsRemoved)
	fmt.Fprintf(w, "memory: %s -> %s (%+d bytes)\n", human(d.Memory.A), human(d.Memory.B), d.Memory.Delta)
	section("rootfs added", d.RootfsAdded, nil)
	section("rootfs changed", d.RootfsChanged, nil)
	section("rootfs no longer changed", d.RootfsDropped, nil)
	section("rootfs deleted", d.RootfsDeleted, nil)
}

func fit(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func when(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func us(v uint32) string {
	return (time.Duration(v) * time.Microsecond).Round(time.Millisecond).String()
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
