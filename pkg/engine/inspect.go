package engine

import (
	"context"
	"os"

	"github.com/stasis-dev/stasis/pkg/inspect"
	"github.com/stasis-dev/stasis/pkg/registry"
)

// OpenCheckpoint unpacks the checkpoint ref names (an archive file, or
// what Ref.Name says) for inspection; close removes the unpacked copy. An
// image pulled for it stays in the store.
func (e *Engine) OpenCheckpoint(ctx context.Context, ref string, o registry.Options) (c *inspect.Checkpoint, close func(), err error) {
	src, err := e.resolve(ctx, Ref{Name: ref, AnyFile: true, Registry: o})
	if err != nil {
		return nil, nil, err
	}
	work, lock, err := e.workDir("inspect-")
	if err != nil {
		return nil, nil, err
	}
	close = func() { lock.Close(); os.RemoveAll(work) }
	if _, err := e.extract(ctx, src, work); err != nil {
		close()
		return nil, nil, err
	}
	if c, err = inspect.OpenDir(work); err != nil {
		close()
		return nil, nil, err
	}
	c.SetArchiveSize(src.archive)
	return c, close, nil
}

// BaseRootfs is the unpacked base image of a checkpoint, or "" when the
// store does not have it.
func (e *Engine) BaseRootfs(c *inspect.Checkpoint) string {
	img, err := e.baseImage(c.Config())
	if err != nil {
		return ""
	}
	dir, err := e.Images.Rootfs(img)
	if err != nil {
		return ""
	}
	return dir
}
