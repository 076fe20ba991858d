package engine

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/inspect"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/rootfs"
	"github.com/stasis-dev/stasis/pkg/runtime"
	"github.com/stasis-dev/stasis/pkg/store"
)

// CheckpointOptions are a checkpoint's choices.
type CheckpointOptions struct {
	// Export writes the archive to this path; empty keeps it in the store.
	Export         string
	Compression    archive.Compression
	LeaveRunning   bool
	TCPEstablished bool
	FileLocks      bool
	// CreateImage stores the checkpoint as a checkpoint image of this name
	// instead of an archive; Push then sends it to its registry.
	CreateImage string
	Push        bool
	Registry    registry.Options
	// Recipients encrypt the archive (age X25519): only their identities
	// restore or inspect it.
	Recipients []age.Recipient
	// ImageKeys encrypt a --create-image layer (public keys, PEM; ocicrypt).
	ImageKeys [][]byte
	// ShareRootfs keeps a stored checkpoint's rootfs diff beside its
	// archive, shared with every stored checkpoint with the same diff: a
	// timeline stores an unchanged diff once.
	ShareRootfs bool
}

// CheckpointResult says where the checkpoint went and where time went.
type CheckpointResult struct {
	Container string          `json:"container"`
	Archive   string          `json:"archive"`
	StoreID   string          `json:"store_id,omitempty"`
	Image     string          `json:"image,omitempty"`
	Size      int64           `json:"size"`
	Digest    string          `json:"digest"`
	CRIU      *criu.DumpStats `json:"criu,omitempty"`
	Phases    Phases          `json:"phases_us"`
}

// Phases are stasis' own timings in microseconds.
type Phases map[string]int64

func (p Phases) add(name string, d time.Duration) { p[name] += d.Microseconds() }

// Checkpoint dumps a running container with CRIU and writes one archive.
// If anything fails the container is left running and thawed and no
// archive is visible.
func (e *Engine) Checkpoint(ctx context.Context, ref string, o CheckpointOptions) (*CheckpointResult, error) {
	start := time.Now()
	criuVersion, err := criu.Check()
	if err != nil {
		return nil, err
	}
	if o.Compression == "" {
		o.Compression = archive.Zstd
		if o.Export != "" {
			o.Compression = archive.CompressionFor(o.Export, archive.Zstd)
		}
	}
	if o.CreateImage != "" && o.Export != "" {
		return nil, fmt.Errorf("checkpoint %s: --export and --create-image exclude each other", ref)
	}
	if o.CreateImage == "" && o.Push {
		return nil, fmt.Errorf("checkpoint %s: --push needs --create-image", ref)
	}
	if o.CreateImage != "" {
		if _, err := registry.ParseReference(o.CreateImage, o.Registry); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", ref, err)
		}
	}
	if o.Export != "" {
		if fi, err := os.Stat(filepath.Dir(o.Export)); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("checkpoint %s: export directory %s does not exist", ref, filepath.Dir(o.Export))
		}
	}
	c, unlock, err := e.getLocked(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if c.Status != StatusRunning {
		return nil, fmt.Errorf("checkpoint %s: container is %s, not running", c.Name, c.Status)
	}
	if err := mayCheckpoint(c, o.Export != "" || o.CreateImage != ""); err != nil {
		return nil, err
	}
	if err := e.waitLazyPages(ctx, c); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", c.Name, err)
	}

	work, lock, err := e.workDir("checkpoint-")
	if err != nil {
		return nil, err
	}
	defer func() { lock.Close(); os.RemoveAll(work) }()
	res := &CheckpointResult{Container: c.Name, Phases: Phases{}}
	resume := func() {}
	res.Phases.add("prepare", time.Since(start))
	p := e.paths(c.ID)

	t := time.Now()
	opts := runtime.CheckpointOptions{
		ImagePath: filepath.Join(work, archive.CheckpointDir), WorkPath: work,
		LeaveRunning: o.LeaveRunning, TCPEstablished: o.TCPEstablished, FileLocks: o.FileLocks,
	}
	pages, err := e.capturePages(ctx, c, o, work)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", c.Name, err)
	}
	if o.LeaveRunning {
		// The container stays frozen from the dump until its rootfs diff
		// is taken, so that files match memory: a file it writes right
		// after the dump would otherwise not be the one CRIU saw open.
		if err := e.rt.Pause(ctx, c.ID); err != nil {
			pages.close()
			return nil, fmt.Errorf("checkpoint %s: freeze: %w", c.Name, err)
		}
		thawed := false
		thaw := func() {
			if !thawed {
				thawed = true
				e.rt.Resume(context.WithoutCancel(ctx), c.ID)
			}
		}
		defer thaw()
		resume = thaw
	}
	err = e.rt.Checkpoint(ctx, c.ID, opts, p.rtLog())
	if cerr := pages.close(); err == nil && cerr != nil {
		// The tasks are gone but their pages are not all kept: fail the
		// checkpoint; the container remains, marked checkpointed, below.
		err = fmt.Errorf("capture pages: %w", cerr)
	}
	if err != nil {
		e.recoverFromFailedDump(context.WithoutCancel(ctx), c)
		return nil, fmt.Errorf("checkpoint %s: %w%s", c.Name, err, e.criuErrors(filepath.Join(work, archive.DumpLog)))
	}
	res.Phases.add("dump", time.Since(t))
	// Dumped, the checkpoint is finished even if a signal comes now:
	// without --leave-running the processes are gone, and their memory
	// is only in work until the archive is written.
	ctx = context.WithoutCancel(ctx)
	if st, err := criu.ReadDumpStats(work); err == nil {
		res.CRIU = st
	}

	// From here the processes are dumped; without --leave-running they are
	// gone, so a failure must not lose the container: it stays as
	// "checkpointed" with its rootfs, restorable once the cause is fixed.
	if !o.LeaveRunning {
		t := time.Now()
		e.waitExit(ctx, c, 10*time.Second)
		// The diff is read from the upper dir, not through the mount.
		e.release(ctx, c)
		c.Checkpointed = time.Now().UTC()
		if err := e.save(c); err != nil {
			return nil, err
		}
		res.Phases.add("stop", time.Since(t))
	}

	t = time.Now()
	if err := e.writeMetadata(c, work, criuVersion); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", c.Name, err)
	}
	resume()
	res.Phases.add("rootfs", time.Since(t))

	members := archive.Members
	summary := summarize(work, res.CRIU, o.ShareRootfs)
	shared := ""
	if o.ShareRootfs && o.Export == "" && o.CreateImage == "" {
		if _, err := os.Stat(filepath.Join(work, archive.RootfsDiff)); err == nil {
			shared = filepath.Join(work, archive.RootfsDiff)
			members = without(members, archive.RootfsDiff)
			// Unchanged since the last checkpoint: share that one's diff.
			if prev, err := store.Latest(e.Checkpoints, c.ID); err == nil && prev.RootfsDiff != "" &&
				prev.Summary != nil && prev.Summary.RootfsDigest == summary.RootfsDigest {
				shared = prev.RootfsDiff
			}
		}
	}
	var ws *archive.WriteStats
	write := func(dest string) (int64, string, error) {
		var err error
		ws, err = archive.WriteFile(dest, archive.Contents{
			Dir: work, Members: members, Captured: pages.captured,
		}, archive.WriteOptions{Compression: o.Compression, Recipients: o.Recipients})
		if err != nil {
			return 0, "", err
		}
		return ws.Bytes, ws.Digest, nil
	}
	switch {
	case o.CreateImage != "":
		layer := filepath.Join(work, archiveName(o.Compression))
		if _, _, err := write(layer); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", c.Name, err)
		}
		img, err := e.BuildCheckpointImage(layer, o.CreateImage, true, o.ImageKeys)
		if err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", c.Name, err)
		}
		res.Image = img.Name
		if res.Archive, err = e.Images.LayerPath(img); err != nil {
			return nil, err
		}
		if o.Push {
			t := time.Now()
			if _, err := e.Push(ctx, img.Name, "", o.Registry); err != nil {
				return nil, fmt.Errorf("checkpoint %s: the checkpoint image %s is stored here but: %w", c.Name, img.Name, err)
			}
			res.Phases.add("push", time.Since(t))
		}
	case o.Export != "":
		if _, _, err := write(o.Export); err != nil {
			return nil, fmt.Errorf("checkpoint %s: write %s: %w", c.Name, o.Export, err)
		}
		res.Archive, _ = filepath.Abs(o.Export)
		if err := archive.WriteDigestFile(res.Archive, ws.Digest); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", c.Name, err)
		}
	default:
		ent, err := e.Checkpoints.Put(store.Entry{
			ContainerID: c.ID, ContainerName: c.Name, Image: c.Image, Created: time.Now().UTC(),
			Compression: string(o.Compression), RootfsDiff: shared, Summary: summary,
		}, archiveName(o.Compression), write)
		if err != nil {
			return nil, fmt.Errorf("checkpoint %s: store: %w", c.Name, err)
		}
		res.Archive, res.StoreID = ent.Archive, ent.ID
	}
	res.Size, res.Digest = ws.Bytes, ws.Digest
	res.Phases.add("archive", ws.Archive)
	res.Phases.add("compress", ws.Compress)
	res.Phases.add("write", ws.Write)
	res.Phases.add("total", time.Since(start))
	return res, nil
}

// pageCapture is a dump's memory compressed on its way out of CRIU.
type pageCapture struct {
	streams  *criu.PageStreams
	mu       sync.Mutex
	captured []*archive.Captured
}

// capturePages sets up page streaming when it is safe and useful: the
// archive is zstd (captured members are spliced in as frames) and the tasks
// die with the dump (see criu.PageStreams). Otherwise CRIU writes files.
func (e *Engine) capturePages(ctx context.Context, c *Container, o CheckpointOptions, work string) (*pageCapture, error) {
	pc := &pageCapture{}
	if o.Compression != archive.Zstd || o.LeaveRunning {
		return pc, nil
	}
	pids, err := e.rt.Pids(ctx, c.ID)
	if err != nil || len(pids) == 0 {
		return pc, nil // CRIU writes files; nothing is lost
	}
	images := filepath.Join(work, archive.CheckpointDir)
	if err := os.Mkdir(images, 0o700); err != nil {
		return nil, err
	}
	pc.streams, err = criu.StreamPages(images, len(pids), func(name string, r io.Reader) error {
		m, err := archive.Capture(path.Join(archive.CheckpointDir, name), r, filepath.Join(work, name+".zst"))
		if err != nil {
			return err
		}
		pc.mu.Lock()
		pc.captured = append(pc.captured, m)
		pc.mu.Unlock()
		return nil
	})
	return pc, err
}

// close is called once CRIU has exited.
func (pc *pageCapture) close() error {
	if pc.streams == nil {
		return nil
	}
	return pc.streams.Close()
}

func without(list []string, x string) []string {
	var out []string
	for _, s := range list {
		if s != x {
			out = append(out, s)
		}
	}
	return out
}

// summarize describes a dump for a history: how many processes, how much
// memory and, for a timeline (withDigest), which rootfs diff. The digest
// reads the whole diff, which only sharing it pays for.
func summarize(work string, st *criu.DumpStats, withDigest bool) *store.Summary {
	s := &store.Summary{}
	if st != nil {
		s.MemoryBytes = int64(st.PagesWritten) * int64(os.Getpagesize())
	}
	if c, err := inspect.OpenDir(work); err == nil {
		if ps, err := c.Processes(inspect.ProcessOptions{}); err == nil {
			s.Processes = len(ps)
		}
	}
	if withDigest {
		s.RootfsDigest, _ = rootfs.DiffDigest(filepath.Join(work, archive.RootfsDiff))
	}
	return s
}

func archiveName(c archive.Compression) string {
	switch c {
	case archive.Zstd:
		return "checkpoint.tar.zst"
	case archive.Gzip:
		return "checkpoint.tar.gz"
	}
	return "checkpoint.tar"
}

// waitLazyPages waits until a lazily restored container has all its memory:
// CRIU cannot dump pages that are still registered with userfaultfd.
func (e *Engine) waitLazyPages(ctx context.Context, c *Container) error {
	f := e.paths(c.ID).lazyPagesPid()
	b, err := os.ReadFile(f)
	if err != nil {
		return nil
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(5 * time.Minute)
	for criu.Running(pid) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("its memory is still being restored lazily (lazy-pages helper pid %d)", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	os.Remove(f)
	return nil
}

// recoverFromFailedDump makes sure a failed dump leaves the container as it
// was: CRIU thaws on its own errors, but not when it is killed, and the
// freezer cgroup then stays frozen.
func (e *Engine) recoverFromFailedDump(ctx context.Context, c *Container) {
	for i := 0; i < 50; i++ {
		st, err := e.rt.State(ctx, c.ID)
		if err != nil || st.Status != runtime.Paused {
			return
		}
		e.rt.Resume(ctx, c.ID)
		time.Sleep(20 * time.Millisecond)
	}
}

// criuErrors quotes the last errors of a CRIU log for an error message and
// keeps the whole log under <root>/logs, since the work directory it was
// written in is removed.
func (e *Engine) criuErrors(log string) string {
	// The log lies in a work directory that may hold an archive's files:
	// read through no link.
	b, err := archive.ReadMember(filepath.Dir(log), filepath.Base(log), 64<<20)
	if err != nil {
		return ""
	}
	kept := filepath.Join(e.root, "logs", time.Now().UTC().Format("20060102T150405.000")+"-"+filepath.Base(log))
	if os.MkdirAll(filepath.Dir(kept), 0o700) == nil && os.WriteFile(kept, b, 0o600) == nil {
		log = kept
	}
	msg := "\nCRIU log: " + log
	for _, l := range criu.ErrorLines(b, 3) {
		msg += "\n  " + l
	}
	return msg
}

// writeMetadata writes config.dump, spec.dump, rootfs-diff.tar and
// deleted.files next to the CRIU images.
func (e *Engine) writeMetadata(c *Container, work, criuVersion string) error {
	p := e.paths(c.ID)
	img, err := e.Images.Get(c.ImageID)
	if err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(work, archive.RootfsDiff))
	if err != nil {
		return err
	}
	lower, err := e.Images.Rootfs(img)
	if err != nil {
		return err
	}
	deleted, err := p.layout(lower).Diff(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if len(deleted) > 0 {
		if err := archive.WriteJSON(work, archive.DeletedFiles, deleted); err != nil {
			return err
		}
	}
	spec, err := readSpec(p.bundle())
	if err != nil {
		return err
	}
	// The namespace's path is this host's; whoever restores makes its own.
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			spec.Linux.Namespaces[i].Path = ""
		}
	}
	spec.Annotations[metadata.CheckpointAnnotationCriuVersion] = criuVersion
	spec.Annotations[metadata.CheckpointAnnotationRuntimeName] = e.rt.Name()
	spec.Annotations[metadata.CheckpointAnnotationEngineVersion] = archive.EngineVersion()
	if err := archive.WriteJSON(work, archive.SpecDump, spec); err != nil {
		return err
	}
	now := time.Now().UTC()
	cfg := archive.Config{
		ContainerConfig: metadata.ContainerConfig{
			ID: c.ID, Name: c.Name, RootfsImage: c.Image, RootfsImageRef: c.ImageID, RootfsImageName: c.Image,
			OCIRuntime: e.rt.Name(), CreatedTime: c.Created, CheckpointedAt: now,
		},
		// Podman resolves this field as an image reference in its own store,
		// where stasis' image IDs do not exist; the name resolves in both.
		RootfsImageID: c.Image, RawImageName: c.Image, Command: c.Args, Spec: spec,
		CreateNetNS: c.Network == runtime.NetworkNone,
	}
	return archive.WriteJSON(work, archive.ConfigDump, &cfg)
}
