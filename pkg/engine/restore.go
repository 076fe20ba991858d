package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/checkpointimage"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/rootfs"
	"github.com/stasis-dev/stasis/pkg/runc"
	"github.com/stasis-dev/stasis/pkg/untar"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// RestoreOptions say what to restore and as what.
type RestoreOptions struct {
	// Container names a container (or, once it is removed, the container
	// name of stored checkpoints) whose latest checkpoint is restored in place.
	Container string
	// Import is an archive file to restore from instead.
	Import string
	// Name is the restored container's name; by default the checkpointed one.
	Name           string
	TCPEstablished bool
	FileLocks      bool
	// LazyPages starts the container before its memory is restored: pages
	// come in on first touch and in the background (criu.LazyPages).
	LazyPages bool
	// Registry is how to pull a checkpoint image, and a base image the
	// store lacks.
	Registry registry.Options
	// Checkpoint picks a stored checkpoint of Container by ID instead of
	// its latest (a rewind).
	Checkpoint string
	// ImportDigest is the sha256 the Import archive must have; by default
	// the one recorded beside it (archive.DigestSuffix), if any.
	ImportDigest string
	// Volumes give the sources of the checkpoint's bind mounts, by
	// destination. A checkpoint from elsewhere needs one for each bind
	// mount stasis does not provide itself (see confineSpec).
	Volumes []runc.Mount
	// Privileged takes host namespaces, capabilities, devices, seccomp and
	// security labels from a checkpoint made elsewhere as it recorded them.
	Privileged bool
	// IgnoreRootfs restores onto the image as it is, without the file
	// changes the checkpoint carries (Podman's --ignore-rootfs).
	IgnoreRootfs bool
}

// RestoreResult reports a restore, as the agent answers it.
type RestoreResult = wire.RestoreResult

// Restore brings a checkpoint back to life as one of the engine's
// containers: in place of the container it was checkpointed from, or as a
// new one. On failure nothing of the new container is left, a container
// restored in place stays checkpointed, and images pulled for the restore
// are removed again.
func (e *Engine) Restore(ctx context.Context, o RestoreOptions) (*RestoreResult, error) {
	start := time.Now()
	if _, err := e.criuVersion(); err != nil {
		return nil, err
	}
	src, err := e.resolve(ctx, Ref{Name: o.Container, Checkpoint: o.Checkpoint, File: o.Import, Digest: o.ImportDigest, Registry: o.Registry,
		Lazy: o.LazyPages})
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	resolved := time.Since(start)
	t := &containerTarget{o: o, src: src}
	if src.container != nil && (o.Name == "" || o.Name == src.container.Name) {
		t.existing = src.container
	}
	res, err := e.restore(ctx, src, t, runc.RestoreOptions{TCPEstablished: o.TCPEstablished, FileLocks: o.FileLocks, LazyPages: o.LazyPages})
	if err != nil {
		if t.c != nil {
			err = fmt.Errorf("restore %s: %w", t.c.Name, err)
		} else {
			err = fmt.Errorf("restore: %w", err)
		}
		return nil, errors.Join(err, src.rollback())
	}
	res.Container, res.ID = t.c.Name, t.c.ID
	res.Phases.Add("resolve", resolved)
	res.Phases["total"] = time.Since(start).Microseconds()
	return res, nil
}

// target is where a restore brings a checkpoint back: one of the engine's
// containers (containerTarget) or a bundle a CRI runtime prepared
// (bundleTarget).
type target interface {
	// prepare makes the root filesystem the checkpoint's file changes are
	// replayed onto, and returns its path.
	prepare(ctx context.Context, e *Engine, ck *unpacked) (root string, err error)
	// configure writes what runc restore reads besides the CRIU images:
	// the spec, a CRIU config file.
	configure(ctx context.Context, e *Engine, ck *unpacked) error
	// start runs `runc restore` and returns the restored init's pid.
	start(ctx context.Context, e *Engine, ck *unpacked, o runc.RestoreOptions, lazy *criu.LazyPagesServer) (int, error)
	// ignoresRootfs says the checkpoint's file changes are not replayed.
	ignoresRootfs() bool
	// abort undoes what prepare and configure did, after a failure, and
	// returns what it could not undo.
	abort(ctx context.Context, e *Engine) error
	// close lets go of what the target holds (locks), failed or not.
	close()
}

// unpacked is a checkpoint unpacked into a work directory.
type unpacked struct {
	archive.Dir
	src *source
	// deleted lists the files the checkpointed container had removed from
	// its image, already checked to stay inside a rootfs.
	deleted []string
	// pages, in a lazy restore from an indexed archive, are the pages
	// images left in the archive, for the lazy-pages helper to serve.
	pages *criu.ArchivePages
	// unmount, in an eager restore unpacked into memory, frees it.
	unmount func() error
}

// pagesFrom says where the restore reads the memory from (wire.RestoreResult).
func (ck *unpacked) pagesFrom() string {
	switch {
	case ck.pages != nil && ck.pages.Fetch != nil:
		return "registry"
	case ck.pages != nil:
		return "archive"
	case ck.unmount != nil:
		return "memory"
	}
	return "disk"
}

// close lets go of the archive the pages were left in (the lazy-pages
// helper has its own descriptor of it), and of the memory an eager restore
// unpacked into (CRIU has read it).
func (ck *unpacked) close() {
	if ck.pages != nil {
		ck.pages.File.Close()
	}
	if ck.unmount != nil {
		ck.unmount()
	}
}

// restore is the one restore pipeline: the checkpoint unpacked, the
// target's rootfs prepared and the checkpoint's file changes replayed onto
// it, the target configured, the lazy-pages server started (with
// o.LazyPages), and `runc restore` run. Of o, the pipeline reads CRIU's
// choices (TCPEstablished, FileLocks, LazyPages) and fills in the rest. On failure the target undoes what
// it did and the work directory goes; with lazy pages, success hands the
// directory (the pages still to come) and its lock to the page server.
func (e *Engine) restore(ctx context.Context, src *source, t target, o runc.RestoreOptions) (_ *RestoreResult, err error) {
	defer t.close()
	res := &RestoreResult{Phases: Phases{}}
	work, lock, err := e.workDir("restore-")
	if err != nil {
		return nil, err
	}
	keepWork := false
	defer func() {
		lock.Close()
		if !keepWork {
			os.RemoveAll(work)
		}
	}()
	tm := time.Now()
	ck, err := e.unpack(ctx, src, work, o.LazyPages)
	if err != nil {
		return nil, err
	}
	defer ck.close()
	res.Phases.Add("extract", time.Since(tm))

	tm = time.Now()
	defer func() {
		if err != nil {
			err = errors.Join(err, t.abort(context.WithoutCancel(ctx), e))
		}
	}()
	root, err := t.prepare(ctx, e, ck)
	if err != nil {
		return nil, err
	}
	res.Phases.Add("prepare", time.Since(tm))
	tm = time.Now()
	if !t.ignoresRootfs() {
		if err := applyRootfs(ctx, ck.Dir, root, ck.deleted, e.maxUnpack); err != nil {
			return nil, err
		}
	}
	res.Phases.Add("rootfs", time.Since(tm))
	if err := t.configure(ctx, e, ck); err != nil {
		return nil, err
	}

	tm = time.Now()
	o.ImagePath, o.WorkPath = ck.Images(), string(ck.Dir)
	var lazy *criu.LazyPagesServer
	if o.LazyPages {
		lazy, err = criu.StartLazyPages(criu.LazyPages{Images: ck.Images(), Work: string(ck.Dir), LogDir: filepath.Join(e.root, "logs"),
			Archive: ck.pages}, lock)
		if err != nil {
			return nil, err
		}
		res.Phases.Add("lazy_pages", time.Since(tm))
		tm = time.Now()
	}
	pid, err := t.start(ctx, e, ck, o, lazy)
	if err != nil {
		if lazy != nil {
			lazy.Stop() // killed, it leaves the work directory and its log
		}
		return nil, err
	}
	res.Phases.Add("criu_restore", time.Since(tm))
	res.Pid = pid
	if lazy != nil {
		// Should the pages stop coming, the helper kills what runs on them;
		// should they have stopped already, that is for us to do.
		if err := lazy.Restored(pid); err != nil {
			syscall.Kill(pid, syscall.SIGKILL)
			return nil, fmt.Errorf("lazy pages: %w", err)
		}
	}
	if st, err := criu.ReadRestoreStats(string(ck.Dir)); err == nil {
		res.CRIU = st
	}
	// With lazy pages the helper goes on: the work directory and its lock
	// are its.
	keepWork = lazy != nil
	res.PagesFrom = ck.pagesFrom()
	return res, nil
}

// unpack extracts src into work and checks what the archive's members
// cannot be checked for as they are unpacked. For a lazy restore, the
// pages of an indexed archive stay in it (extractLazy).
func (e *Engine) unpack(ctx context.Context, src *source, work string, lazy bool) (*unpacked, error) {
	ck := &unpacked{src: src}
	var err error
	switch {
	case lazy && indexTrusted(src):
		ck.Dir, ck.pages, err = e.extractLazy(ctx, src, work)
		if errors.Is(err, archive.ErrNoIndex) {
			ck.Dir, err = "", nil
		}
	case !lazy:
		ck.Dir, ck.unmount, err = e.extractToMemory(ctx, src, work)
		if errors.Is(err, errNoMemoryPath) {
			ck.Dir, err = "", nil
		}
	}
	if err == nil && ck.Dir == "" {
		ck.Dir, err = e.extract(ctx, src, work)
	}
	if err != nil {
		return nil, fmt.Errorf("unpack checkpoint %s: %w", src.archive, err)
	}
	dir := ck.Dir
	deleted, err := dir.Deleted()
	if err == nil {
		err = rootfs.ValidateDeleted(deleted)
	}
	if err != nil {
		ck.close()
		return nil, fmt.Errorf("checkpoint %s: %w", src.archive, err)
	}
	ck.deleted = deleted
	return ck, nil
}

// extract unpacks a checkpoint into work, checking its digest when known,
// decrypting it with the engine's identities, adding a shared rootfs diff.
func (e *Engine) extract(ctx context.Context, src *source, work string) (archive.Dir, error) {
	ro := archive.ReadOptions{Identities: e.identities, Digest: src.digest, MaxUnpack: e.maxUnpack}
	if src.encryptedLayer != nil {
		plain := filepath.Join(work, ".decrypted-layer")
		if err := checkpointimage.Decrypt(src.archive, *src.encryptedLayer, e.decryptionKeys, plain); err != nil {
			return "", err
		}
		defer os.Remove(plain)
		// Decrypt checked the plain layer's digest.
		ro.Digest = ""
		return archive.Extract(ctx, plain, work, ro)
	}
	dir, err := archive.Extract(ctx, src.archive, work, ro)
	if err != nil {
		return "", err
	}
	return dir, e.linkRootfsDiff(src, dir)
}

// linkRootfsDiff puts a stored checkpoint's shared rootfs diff, kept beside
// its archive, where the unpacked checkpoint has it.
func (e *Engine) linkRootfsDiff(src *source, dir archive.Dir) error {
	if src.rootfsDiff == "" {
		return nil
	}
	if err := os.Link(src.rootfsDiff, dir.RootfsDiff()); err != nil {
		return fmt.Errorf("rootfs diff of %s: %w", src.archive, err)
	}
	return nil
}

// applyRootfs unpacks dir's rootfs diff (opened as a member: never through
// a link) onto root and removes the deleted paths.
func applyRootfs(ctx context.Context, dir archive.Dir, root string, deleted []string, maxUnpack int64) error {
	var diff io.Reader // a container that wrote nothing has no diff
	f, err := dir.OpenMember(archive.RootfsDiff)
	switch {
	case err == nil:
		defer f.Close()
		diff = f
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	err = rootfs.Apply(ctx, root, diff, deleted, maxUnpack)
	if errors.Is(err, untar.ErrUnsafePath) {
		return fmt.Errorf("checkpoint is unsafe: %w: %s: %w", archive.ErrInvalid, archive.RootfsDiff, err)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", archive.RootfsDiff, err)
	}
	return nil
}
