// Package inspect looks inside a checkpoint without restoring it: what was
// checkpointed and when, the process tree with command lines and
// environments, open files, sockets, mounts, CRIU's statistics, the
// rootfs changes, a search through the memory of a process, and a file
// as the container saw it. CRIU images are decoded with go-criu's crit.
//
// The JSON form (Report and what it holds) is stable: fields are only ever
// added, never renamed or removed, so scripts can rely on it.
package inspect

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	"github.com/checkpoint-restore/go-criu/v8/crit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/criu"
)

// Checkpoint is a checkpoint unpacked for reading.
type Checkpoint struct {
	dir         archive.Dir
	archiveSize int64
	cfg         *archive.Config
	// checked are the images whose framing was checked (check).
	checked map[string]bool
}

// OpenDir reads a checkpoint already unpacked in dir (or being written
// there: the images and config.dump are what it needs).
func OpenDir(dir string) (*Checkpoint, error) {
	d := archive.Dir(dir)
	cfg, err := d.Config()
	if err != nil {
		return nil, err
	}
	return &Checkpoint{dir: d, cfg: cfg, checked: map[string]bool{}}, nil
}

// SetArchiveSize records the size of the archive the checkpoint came from,
// for Summary.
func (c *Checkpoint) SetArchiveSize(path string) {
	if fi, err := os.Stat(path); err == nil {
		c.archiveSize = fi.Size()
	}
}

// Config is the checkpoint's config.dump.
func (c *Checkpoint) Config() *archive.Config { return c.cfg }

// Report is everything inspect can say; sections not asked for are empty.
type Report struct {
	Container    string    `json:"container"`
	Image        string    `json:"image"`
	ImageID      string    `json:"image_id,omitempty"`
	Engine       string    `json:"engine,omitempty"`
	Runtime      string    `json:"runtime,omitempty"`
	Created      time.Time `json:"created,omitzero"`
	Checkpointed time.Time `json:"checkpointed,omitzero"`
	CRIUVersion  string    `json:"criu_version,omitempty"`
	Sizes        Sizes     `json:"sizes"`

	Processes []*Process        `json:"processes,omitempty"`
	Mounts    []Mount           `json:"mounts,omitempty"`
	Stats     *criu.DumpStats   `json:"stats,omitempty"`
	Rootfs    *RootfsChanges    `json:"rootfs,omitempty"`
	Matches   []MemoryMatch     `json:"memory_matches,omitempty"`
	Extra     map[string]string `json:"-"`
}

// Sizes are in bytes.
type Sizes struct {
	Archive    int64 `json:"archive"`
	Memory     int64 `json:"memory"` // the page images
	RootfsDiff int64 `json:"rootfs_diff"`
}

// Summary fills the header of a report: what, from which image, by whom,
// when, and how big.
func (c *Checkpoint) Summary() (*Report, error) {
	r := &Report{
		Container: c.cfg.Name, Image: c.cfg.ImageName(), ImageID: c.cfg.ImageID(), Runtime: c.cfg.OCIRuntime,
		Created: c.cfg.CreatedTime, Checkpointed: c.cfg.CheckpointedAt,
	}
	if spec, err := c.dir.Spec(); err == nil {
		r.Engine = spec.Annotations[metadata.CheckpointAnnotationEngine]
		if r.Engine == "" && spec.Annotations["io.container.manager"] == "libpod" {
			r.Engine = "podman"
		}
		r.CRIUVersion = spec.Annotations[metadata.CheckpointAnnotationCriuVersion]
	}
	r.Sizes.Archive = c.archiveSize
	pages, _ := filepath.Glob(filepath.Join(c.dir.Images(), "pages-*.img"))
	for _, p := range pages {
		if fi, err := os.Stat(p); err == nil {
			r.Sizes.Memory += fi.Size()
		}
	}
	if fi, err := os.Stat(c.dir.RootfsDiff()); err == nil {
		r.Sizes.RootfsDiff = fi.Size()
	}
	return r, nil
}

// Process is one process of the checkpoint.
type Process struct {
	Pid     uint32   `json:"pid"`
	Ppid    uint32   `json:"ppid"`
	Pgid    uint32   `json:"pgid"`
	Sid     uint32   `json:"sid"`
	Comm    string   `json:"comm"`
	Cmdline []string `json:"cmdline,omitempty"`
	Env     []string `json:"env,omitempty"`
	Files   []File   `json:"files,omitempty"`
	Sockets []Socket `json:"sockets,omitempty"`
}

// File is an open file descriptor.
type File struct {
	Fd   string `json:"fd"`
	Type string `json:"type,omitempty"`
	Path string `json:"path"`
}

// Socket is an open socket.
type Socket struct {
	Fd       uint32 `json:"fd"`
	Family   string `json:"family,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	Type     string `json:"type,omitempty"`
	State    string `json:"state,omitempty"`
	Src      string `json:"src,omitempty"`
	Dst      string `json:"dst,omitempty"`
}

// ProcessOptions choose what is read for each process.
type ProcessOptions struct {
	Cmdline, Env, Files, Sockets bool
	// Pid limits the list to one process (0: all).
	Pid uint32
}

func (c *Checkpoint) critter() crit.Critter {
	return crit.New(nil, nil, c.dir.Images(), false, false)
}

// Processes lists the process tree in pid order, with ppid linking it.
func (c *Checkpoint) Processes(o ProcessOptions) ([]*Process, error) {
	if err := c.check("pstree.img", "core-*.img"); err != nil {
		return nil, err
	}
	root, err := decode("process tree", c.critter().ExplorePs)
	if err != nil {
		return nil, err
	}
	if root == nil { // no entry, or none without a parent
		return nil, corrupt("process tree", errors.New("pstree.img has no root process"))
	}
	var out []*Process
	var walk func(t *crit.PsTree, ppid uint32)
	walk = func(t *crit.PsTree, ppid uint32) {
		out = append(out, &Process{Pid: t.PID, Ppid: ppid, Pgid: t.PgID, Sid: t.SID, Comm: t.Comm})
		for _, ch := range t.Children {
			walk(ch, t.PID)
		}
	}
	walk(root, 0)
	sort.Slice(out, func(i, j int) bool { return out[i].Pid < out[j].Pid })
	if o.Pid != 0 {
		var one []*Process
		for _, p := range out {
			if p.Pid == o.Pid {
				one = append(one, p)
			}
		}
		if one == nil {
			return nil, fmt.Errorf("no process with pid %d in the checkpoint", o.Pid)
		}
		out = one
	}
	byPid := map[uint32]*Process{}
	for _, p := range out {
		byPid[p.Pid] = p
		if o.Cmdline || o.Env {
			if err := c.readArgs(p, o.Cmdline, o.Env); err != nil {
				return nil, err
			}
		}
	}
	if o.Files {
		if err := c.check(fileImages...); err != nil {
			return nil, err
		}
		fds, err := decode("open files", c.critter().ExploreFds)
		if err != nil {
			return nil, err
		}
		for _, fd := range fds {
			if p := byPid[fd.PId]; p != nil {
				for _, f := range fd.Files {
					p.Files = append(p.Files, File{Fd: f.Fd, Type: f.Type, Path: f.Path})
				}
			}
		}
	}
	if o.Sockets {
		if err := c.check(fileImages...); err != nil {
			return nil, err
		}
		sks, err := decode("sockets", c.critter().ExploreSk)
		if err != nil {
			return nil, err
		}
		for _, sk := range sks {
			if p := byPid[sk.PId]; p != nil {
				for _, s := range sk.Sockets {
					family := s.Family
					if family == "" && s.FdType == "UNIXSK" {
						family = "UNIX"
					}
					p.Sockets = append(p.Sockets, Socket{
						Fd: s.Fd, Family: family, Protocol: s.Protocol, Type: s.Type, State: s.State,
						Src: hostPort(s.SrcAddr, s.SrcPort), Dst: hostPort(s.DestAddr, s.DestPort),
					})
				}
			}
		}
	}
	return out, nil
}

// readArgs reads a process's command line and environment from its
// memory, where the kernel keeps them, at the bounds its mm image records.
func (c *Checkpoint) readArgs(p *Process, cmdline, env bool) error {
	if err := c.check("mm-*.img"); err != nil {
		return err
	}
	f, err := c.dir.OpenMember(fmt.Sprintf("%s/mm-%d.img", archive.CheckpointDir, p.Pid))
	if err != nil {
		return fmt.Errorf("pid %d: %w", p.Pid, err)
	}
	defer f.Close()
	img, err := decode("mm image", func() (*crit.CriuImage, error) { return crit.New(f, nil, "", false, false).Decode(&mm.MmEntry{}) })
	if err != nil || len(img.Entries) == 0 {
		return fmt.Errorf("pid %d: mm image: %v", p.Pid, err)
	}
	if img.Magic != "MM" { // crit decodes by the magic, whatever was asked
		return fmt.Errorf("pid %d: mm-%d.img is a %s image", p.Pid, p.Pid, img.Magic)
	}
	m := img.Entries[0].Message.(*mm.MmEntry)
	ix, err := c.pageIndex(p.Pid)
	if err != nil {
		return err
	}
	if cmdline {
		b, err := ix.read(m.GetMmArgStart(), m.GetMmArgEnd())
		if err != nil {
			return fmt.Errorf("pid %d: command line: %w", p.Pid, err)
		}
		p.Cmdline = splitNul(string(b))
	}
	if env {
		b, err := ix.read(m.GetMmEnvStart(), m.GetMmEnvEnd())
		if err != nil {
			return fmt.Errorf("pid %d: environment: %w", p.Pid, err)
		}
		p.Env = splitNul(string(b))
	}
	return nil
}

// corrupt words a decoding error: crit does not say which image failed.
func corrupt(what string, err error) error {
	return fmt.Errorf("%s: the checkpoint's CRIU images are corrupt or truncated: %w", what, err)
}

func splitNul(s string) []string {
	var out []string
	for _, f := range strings.Split(s, "\x00") {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

func hostPort(addr string, port uint32) string {
	switch {
	case addr == "" && port == 0:
		return ""
	case port == 0 && (addr == "::" || addr == "0.0.0.0"):
		return ""
	case port == 0:
		return addr
	case strings.Contains(addr, ":"):
		return fmt.Sprintf("[%s]:%d", addr, port)
	}
	return fmt.Sprintf("%s:%d", addr, port)
}

// Mount is one mount of the container's mount namespace.
type Mount struct {
	Mountpoint string `json:"mountpoint"`
	Source     string `json:"source,omitempty"`
	Fstype     string `json:"fstype,omitempty"`
	Root       string `json:"root,omitempty"`
	External   bool   `json:"external,omitempty"`
}

// Mounts lists the mounts CRIU recorded, sorted by mount point.
func (c *Checkpoint) Mounts() ([]Mount, error) {
	if err := c.check("mountpoints-*.img"); err != nil {
		return nil, err
	}
	files, _ := filepath.Glob(filepath.Join(c.dir.Images(), "mountpoints-*.img"))
	var out []Mount
	for _, p := range files {
		f, err := c.dir.OpenMember(archive.CheckpointDir + "/" + filepath.Base(p))
		if err != nil {
			return nil, err
		}
		img, err := decode(filepath.Base(p), func() (*crit.CriuImage, error) {
			return crit.New(f, nil, "", false, false).Decode(&mnt.MntEntry{})
		})
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(p), err)
		}
		if img.Magic != "MNTS" { // crit decodes by the magic, whatever was asked
			return nil, fmt.Errorf("%s is a %s image", filepath.Base(p), img.Magic)
		}
		for _, e := range img.Entries {
			m := e.Message.(*mnt.MntEntry)
			out = append(out, Mount{
				Mountpoint: m.GetMountpoint(), Source: m.GetSource(), Root: m.GetRoot(),
				Fstype: fstypeName(m), External: m.GetExtKey() != "",
			})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Mountpoint < out[j].Mountpoint })
	return out, nil
}

func fstypeName(m *mnt.MntEntry) string {
	if n := m.GetFsname(); n != "" {
		return n
	}
	return strings.ToLower(strings.TrimPrefix(mnt.Fstype(m.GetFstype()).String(), "FSTYPE_"))
}

// Stats are CRIU's figures for the dump.
func (c *Checkpoint) Stats() (*criu.DumpStats, error) {
	return criu.ReadDumpStats(string(c.dir))
}

// RootfsChanges are the container's writes over its image.
type RootfsChanges struct {
	Changed []RootfsEntry `json:"changed"`
	Deleted []string      `json:"deleted,omitempty"`
}

// RootfsEntry is a file the container added or changed.
type RootfsEntry struct {
	Path  string      `json:"path"`
	Type  string      `json:"type"` // file, dir, symlink, other
	Size  int64       `json:"size"`
	Mode  os.FileMode `json:"mode"`
	Link  string      `json:"link,omitempty"`
	MTime time.Time   `json:"mtime"`
}

// Rootfs lists rootfs-diff.tar and deleted.files.
func (c *Checkpoint) Rootfs() (*RootfsChanges, error) {
	rc := &RootfsChanges{Changed: []RootfsEntry{}}
	deleted, err := c.dir.Deleted()
	if err != nil {
		return nil, err
	}
	rc.Deleted = deleted
	f, err := c.dir.OpenMember(archive.RootfsDiff)
	if errors.Is(err, os.ErrNotExist) {
		return rc, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return rc, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", archive.RootfsDiff, err)
		}
		typ := "other"
		switch h.Typeflag {
		case tar.TypeReg:
			typ = "file"
		case tar.TypeDir:
			typ = "dir"
		case tar.TypeSymlink:
			typ = "symlink"
		}
		rc.Changed = append(rc.Changed, RootfsEntry{
			Path: "/" + strings.TrimPrefix(strings.TrimPrefix(h.Name, "./"), "/"), Type: typ, Size: h.Size,
			Mode: h.FileInfo().Mode(), Link: h.Linkname, MTime: h.ModTime.UTC(),
		})
	}
}
