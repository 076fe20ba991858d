package engine

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/rootfs"
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
}

// Prepare finds ref as Restore does (a stored checkpoint by ID, the latest
// of a container name, a checkpoint image in the store, or one to pull) and
// unpacks it into dir, checking its digest and decrypting it with the
// engine's keys. A pulled image stays in the store, so the next replica
// restored from it does not pull again.
func (e *Engine) Prepare(ctx context.Context, ref string, reg registry.Options, dir string) (*Prepared, error) {
	var pulled []string
	src, err := e.restoreSource(ctx, RestoreOptions{Container: ref, Registry: reg}, &pulled)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	d, err := e.extract(src, dir)
	if err != nil {
		return nil, fmt.Errorf("unpack checkpoint %s: %w", ref, err)
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", ref, err)
	}
	deleted, err := d.Deleted()
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", ref, err)
	}
	if err := rootfs.ValidateDeleted(deleted); err != nil {
		return nil, fmt.Errorf("checkpoint %s is unsafe: %w", ref, err)
	}
	return &Prepared{Dir: d, Deleted: deleted}, nil
}

// ApplyRootfs replays the checkpointed container's file changes onto root,
// a fresh rootfs of the same base image.
func (p *Prepared) ApplyRootfs(root string) error {
	f, err := os.Open(p.RootfsDiff())
	switch {
	case err == nil:
		defer f.Close()
		err = rootfs.Apply(root, f, p.Deleted)
	case os.IsNotExist(err): // a container that wrote nothing has no diff
		err = rootfs.Apply(root, nil, p.Deleted)
	}
	if errors.Is(err, untar.ErrUnsafePath) {
		return fmt.Errorf("checkpoint is unsafe: %w", err)
	}
	return err
}
