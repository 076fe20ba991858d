package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/rootfs"
	"github.com/stasis-dev/stasis/pkg/store"
	"github.com/stasis-dev/stasis/pkg/untar"
)

// Prepared is a checkpoint unpacked for a restore that another runtime's
// bundle receives (the OCI runtime wrapper in pkg/ociwrap): the bundle has
// its own rootfs, cgroup and namespaces, so only the CRIU images and the
// rootfs changes are taken from the checkpoint.
type Prepared struct {
	archive.Dir
	// Deleted lists the files the checkpointed container had removed from
	// its image, already checked to stay inside a rootfs.
	Deleted []string
	// maxUnpack is the engine's bound on what the rootfs diff writes.
	maxUnpack int64
	// lock is held on the work directory while it is in use (Recover
	// removes it once free).
	lock *os.File
	// Resolved is how long finding the checkpoint took (pulling it, and
	// verifying its signature with trust), Unpacked how long unpacking.
	Resolved, Unpacked time.Duration
}

// PrepareOptions say how Prepare finds a checkpoint.
type PrepareOptions struct {
	// Registry is how to pull a checkpoint image.
	Registry registry.Options
	// Expect is what the checkpoint image's signature must say of it when
	// the engine verifies signatures (Options.Trust): the namespace the
	// pod is restored into, and its container.
	Expect provenance.Expect
}

// Prepare finds ref as Restore does (the latest stored checkpoint of a
// container name, a checkpoint image in the store, or one to pull) and
// unpacks it into a new work directory under the engine's root (on disk:
// a checkpoint may be larger than the tmpfs a bundle lives on), checking
// its digest and decrypting it with the engine's keys. A pulled image stays
// in the store, so the next replica restored from it does not pull again.
// With trust, ref must be a checkpoint image, signed and as o.Expect says.
// Close removes the work directory.
func (e *Engine) Prepare(ctx context.Context, ref string, o PrepareOptions) (_ *Prepared, err error) {
	var pulled []string
	var src *source
	start := time.Now()
	if e.trust != nil {
		src, err = e.signedSource(ctx, ref, o, &pulled)
	} else {
		src, err = e.restoreSource(ctx, RestoreOptions{Container: ref, Registry: o.Registry}, &pulled)
	}
	if err != nil {
		return nil, err
	}
	dir, lock, err := e.workDir("prepare-")
	if err != nil {
		return nil, err
	}
	p := &Prepared{Dir: archive.Dir(dir), maxUnpack: e.maxUnpack, lock: lock, Resolved: time.Since(start)}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	d, err := e.extract(ctx, src, dir)
	if err != nil {
		return nil, fmt.Errorf("unpack checkpoint %s: %w", ref, err)
	}
	deleted, err := d.Deleted() // archive.Extract validated the rest
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", ref, err)
	}
	if err := rootfs.ValidateDeleted(deleted); err != nil {
		return nil, fmt.Errorf("checkpoint %s is unsafe: %w", ref, err)
	}
	p.Deleted = deleted
	p.Unpacked = time.Since(start) - p.Resolved
	return p, nil
}

// signedSource finds checkpoint image ref for a Prepare with trust: only
// a verified checkpoint image is restored. The archive of a container or
// of a stored checkpoint carries no signature; what else ref names is
// looked up only to say so when it is no such image, off the restore's
// path.
func (e *Engine) signedSource(ctx context.Context, ref string, o PrepareOptions, pulled *[]string) (*source, error) {
	src, err := e.checkpointImageArchive(ctx, ref, o.Registry, pulled, &o.Expect)
	if err == nil {
		return src, nil
	}
	if _, cerr := e.Checkpoints.Get(ref); cerr == nil {
		return nil, fmt.Errorf("prepare %s: it names a stored checkpoint, and with trusted keys only signed checkpoint images are restored", ref)
	}
	if _, cerr := e.Get(ctx, ref); cerr == nil {
		return nil, fmt.Errorf("prepare %s: it names a container, and with trusted keys only signed checkpoint images are restored", ref)
	}
	if _, serr := store.Latest(e.Checkpoints, ref); serr == nil {
		return nil, fmt.Errorf("prepare %s: it names a container's stored checkpoints, and with trusted keys only signed checkpoint images are restored", ref)
	}
	return nil, fmt.Errorf("prepare %s (with trusted keys, only as a signed checkpoint image): %w", ref, err)
}

// Lock is the work directory's lock, for a process that takes the
// directory over (a lazy-pages server inherits it and removes the
// directory when done).
func (p *Prepared) Lock() *os.File { return p.lock }

// Close removes the work directory.
func (p *Prepared) Close() {
	p.lock.Close()
	os.RemoveAll(string(p.Dir))
}

// HandOver lets go of the work directory, now another process's.
func (p *Prepared) HandOver() { p.lock.Close() }

// ApplyRootfs replays the checkpointed container's file changes onto root,
// a fresh rootfs of the same base image.
func (p *Prepared) ApplyRootfs(ctx context.Context, root string) error {
	return applyRootfs(ctx, p.Dir, root, p.Deleted, p.maxUnpack)
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
