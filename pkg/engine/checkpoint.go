package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"
	metadata "github.com/checkpoint-restore/checkpointctl/lib"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/runc"
	"github.com/stasis-dev/stasis/pkg/wire"
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
	// IgnoreRootfs leaves the container's file changes out (DumpOptions).
	IgnoreRootfs bool
}

// CheckpointResult says where a checkpoint went and where time went, as
// the agent answers it.
type CheckpointResult = wire.CheckpointResult

// Phases are stasis' own timings in microseconds.
type Phases = wire.Phases

// Checkpoint dumps one of the engine's running containers with CRIU and
// writes one archive where o says (Dump does the work). If anything fails
// no archive is visible and the container is left running and thawed; if
// the dump had already ended its processes, it is recorded as checkpointed
// with its rootfs, and the memory that could not be archived is lost: a
// restore brings back its previous stored checkpoint, if any.
func (e *Engine) Checkpoint(ctx context.Context, ref string, o CheckpointOptions) (*CheckpointResult, error) {
	start := time.Now()
	sink, err := o.sink()
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", ref, err)
	}
	c, unlock, err := e.getLocked(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if c.Status != StatusRunning {
		return nil, fmt.Errorf("checkpoint %s: container is %s, not running", c.Name, c.Status)
	}
	if err := e.waitLazyPages(ctx, c); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", c.Name, err)
	}
	s, err := e.subject(c)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", c.Name, err)
	}
	res, err := e.Dump(ctx, DumpOptions{LeaveRunning: o.LeaveRunning, TCPEstablished: o.TCPEstablished, FileLocks: o.FileLocks,
		IgnoreRootfs: o.IgnoreRootfs},
		DumpJob{Subject: s, To: sink})
	if err != nil {
		return nil, err
	}
	res[0].Phases["total"] = time.Since(start).Microseconds()
	return res[0], nil
}

// sink is where o sends the archive; it checks the options on the way.
func (o CheckpointOptions) sink() (Sink, error) {
	switch {
	case o.CreateImage != "" && o.Export != "":
		return nil, errors.New("--export and --create-image exclude each other")
	case o.CreateImage == "" && o.Push:
		return nil, errors.New("--push needs --create-image")
	case o.CreateImage != "":
		if _, err := registry.ParseReference(o.CreateImage, o.Registry); err != nil {
			return nil, err
		}
		return ImageSink{Name: o.CreateImage, Compression: o.Compression, Keys: o.ImageKeys, Push: o.Push, Registry: o.Registry}, nil
	case o.Export != "":
		if fi, err := os.Stat(filepath.Dir(o.Export)); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("export directory %s does not exist", filepath.Dir(o.Export))
		}
		return FileSink{Path: o.Export, Compression: o.Compression, Recipients: o.Recipients}, nil
	}
	return StoreSink{Compression: o.Compression, Recipients: o.Recipients, ShareRootfs: o.ShareRootfs}, nil
}

// subject is how a dump sees one of the engine's containers.
func (e *Engine) subject(c *Container) (*Subject, error) {
	p := e.paths(c.ID)
	img, err := e.Images.Get(c.ImageID)
	if err != nil {
		return nil, err
	}
	lower, err := e.Images.Rootfs(img)
	if err != nil {
		return nil, err
	}
	spec, err := readSpec(p.bundle())
	if err != nil {
		return nil, err
	}
	return &Subject{
		own:     true,
		Runtime: e.rt, ID: c.ID, Name: c.Name, Marks: c.Labels, Spec: spec, Layout: p.layout(lower),
		Config: archive.Config{
			ContainerConfig: metadata.ContainerConfig{
				ID: c.ID, Name: c.Name, RootfsImage: c.Image, RootfsImageRef: c.ImageID, RootfsImageName: c.Image,
				CreatedTime: c.Created,
			},
			// Podman resolves this field as an image reference in its own
			// store, where stasis' image IDs do not exist; the name
			// resolves in both.
			RootfsImageID: c.Image, RawImageName: c.Image, Command: c.Args,
			CreateNetNS: c.Network == runc.NetworkNone,
		},
		stopped: func(ctx context.Context) error {
			e.waitExit(ctx, c, 10*time.Second)
			// The diff is read from the upper dir, not through the mount;
			// a runtime that cannot forget the dead container yet is asked
			// again by the restore or rm.
			e.release(ctx, c)
			c.Checkpointed = time.Now().UTC()
			return e.save(c)
		},
	}, nil
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
	for criu.Serving(pid) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("its memory is still being restored lazily (lazy-pages helper pid %d)", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	os.Remove(f)
	return nil
}
