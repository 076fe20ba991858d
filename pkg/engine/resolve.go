package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/checkpointimage"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/store"
)

// Ref names a checkpoint, for a restore or an inspection.
type Ref struct {
	// Name is a container (its latest stored checkpoint; once it is
	// removed, the latest stored under its name), a stored checkpoint's
	// ID, or a checkpoint image in the store or a registry.
	Name string
	// Checkpoint picks one of Name's stored checkpoints by ID (a rewind).
	Checkpoint string
	// File is an archive file to read instead; Digest is the sha256 it
	// must have, by default the one recorded beside it
	// (archive.DigestSuffix), if any.
	File, Digest string
	// AnyFile lets Name be an archive file's path too (inspect, diff).
	AnyFile bool
	// Registry is how to pull a checkpoint image.
	Registry registry.Options
	// Expect is what a checkpoint image's signature must say of it when
	// the engine verifies signatures (Options.Trust); nil: anything.
	Expect *provenance.Expect
	// Signed admits only a checkpoint image whose signature verifies
	// (the engine must have trust): an archive file, a container's or a
	// stored checkpoint carries no signature.
	Signed bool
	// Lazy says the checkpoint is for a lazy restore: a checkpoint image
	// not in the store is then read where it lies in its registry, when
	// it can be (registrySource), and stored once all of it has come.
	Lazy bool
}

// source is a checkpoint found: where its archive is, what else is known
// of it, and what finding it fetched, which rollback removes.
type source struct {
	archive string
	// digest, when known, is what the archive's bytes must hash to.
	digest string
	// indexDigest, when known, is what its frame index must hash to
	// (archive.Index), recorded where digest is: trusting it, a lazy
	// restore reads pages where they lie, each frame checked on its own.
	indexDigest string
	// rootfsDiff is a stored checkpoint's shared rootfs diff, kept beside
	// its archive (store.Entry.RootfsDiff).
	rootfsDiff string
	// container is the container whose stored checkpoint this is, if it
	// still exists (an in-place restore brings it back).
	container *Container
	// image is what a checkpoint image says about itself.
	image *checkpointimage.Info
	// encryptedLayer describes the layer of an encrypted checkpoint
	// image: the archive must be decrypted first.
	encryptedLayer *v1.Descriptor
	// stored is set for a checkpoint this node's store made: its spec.dump
	// is stasis' own. Any other is restored into a spec of stasis' making.
	stored bool
	// pulled are the images fetched for this checkpoint (its image, a
	// signature, a base image), in the engine's store.
	pulled []string
	// remote, for a lazy restore, is the archive left in its registry,
	// read by range requests; archive then only names it.
	remote *registryArchive
	e      *Engine
}

// rollback removes what resolving (and restoring) the source pulled: a
// failed restore leaves the image store as it found it.
func (s *source) rollback() error {
	var errs []error
	for _, name := range s.pulled {
		if err := s.e.Images.Remove(name); err != nil {
			errs = append(errs, fmt.Errorf("remove %s, pulled for the restore: %w", name, err))
		}
	}
	s.pulled = nil
	return errors.Join(errs...)
}

// resolve is the one way a reference becomes a checkpoint. With trust
// (Options.Trust), a checkpoint image is one only if its signature
// verifies and says what r.Expect says.
func (e *Engine) resolve(ctx context.Context, r Ref) (*source, error) {
	if r.Signed {
		if e.trust == nil {
			return nil, fmt.Errorf("%s: only a signed checkpoint image may be restored here, and no key to verify it with is set", r.Name)
		}
		return e.signedSource(ctx, r)
	}
	if r.File != "" {
		if r.Name != "" {
			return nil, errors.New("give either a container or an archive file, not both")
		}
		if _, err := os.Stat(r.File); err != nil {
			return nil, err
		}
		if r.Digest != "" {
			return &source{archive: r.File, digest: r.Digest, e: e}, nil
		}
		d, err := archive.ReadDigestFile(r.File)
		if err != nil {
			return nil, err
		}
		return &source{archive: r.File, digest: d.Archive, indexDigest: d.Index, e: e}, nil
	}
	if r.Name == "" {
		return nil, errors.New("name a container, a stored checkpoint or a checkpoint image, or give an archive file")
	}
	if fi, err := os.Stat(r.Name); r.AnyFile && err == nil && fi.Mode().IsRegular() {
		return &source{archive: r.Name, e: e}, nil
	}
	c, err := e.Get(ctx, r.Name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	ent, err := e.storedCheckpoint(c, r)
	if err == nil {
		if c == nil {
			// Named by its ID, a checkpoint still belongs to its container.
			c, _ = e.Get(ctx, ent.ContainerID)
		}
		return &source{archive: ent.Archive, digest: ent.Digest, indexDigest: ent.IndexDigest, rootfsDiff: ent.RootfsDiff, container: c, stored: true, e: e}, nil
	}
	if c != nil || r.Checkpoint != "" {
		return nil, fmt.Errorf("%s: %w", r.Name, err)
	}
	src, err := e.checkpointImage(ctx, r.Name, r.Registry, r.Expect, r.Lazy, nil)
	if err != nil {
		return nil, fmt.Errorf("%s names no container, no stored checkpoint, and as a checkpoint image: %w", r.Name, err)
	}
	return src, nil
}

// storedCheckpoint is the stored checkpoint r means: the one r.Checkpoint
// names, the one r.Name names, or the latest of container c (or, with no
// such container, of the container that had the name r.Name).
func (e *Engine) storedCheckpoint(c *Container, r Ref) (*store.Entry, error) {
	if r.Checkpoint != "" {
		return e.Checkpoints.Get(r.Checkpoint)
	}
	if c == nil {
		if ent, err := e.Checkpoints.Get(r.Name); err == nil {
			return ent, nil
		}
		return store.Latest(e.Checkpoints, r.Name)
	}
	ent, err := store.Latest(e.Checkpoints, c.ID)
	if err != nil {
		ent, err = store.Latest(e.Checkpoints, c.Name)
	}
	return ent, err
}

// signedSource resolves r.Signed: only a verified checkpoint image is
// restored. The archive of a container or of a stored checkpoint carries
// no signature; what else r names is looked up only to say so when it is
// no such image, off the restore's path.
func (e *Engine) signedSource(ctx context.Context, r Ref) (*source, error) {
	refuse := func(what string) error {
		return fmt.Errorf("%s %s, and with trusted keys only signed checkpoint images are restored", r.Name, what)
	}
	if r.File != "" {
		return nil, fmt.Errorf("archive file %s: with trusted keys only signed checkpoint images are restored", r.File)
	}
	// What else the name means is asked only when no image of that name
	// is here: before a pull, so that a local name never goes to a
	// registry, and to explain a failure.
	unsigned := func() error {
		if _, err := e.Checkpoints.Get(r.Name); err == nil {
			return refuse("names a stored checkpoint")
		}
		if _, err := e.Get(ctx, r.Name); err == nil {
			return refuse("names a container")
		}
		if _, err := store.Latest(e.Checkpoints, r.Name); err == nil {
			return refuse("names a container's stored checkpoints")
		}
		return nil
	}
	src, err := e.checkpointImage(ctx, r.Name, r.Registry, r.Expect, r.Lazy, unsigned)
	if err == nil {
		return src, nil
	}
	if uerr := unsigned(); uerr != nil {
		return nil, uerr
	}
	return nil, fmt.Errorf("%s (with trusted keys, only as a signed checkpoint image): %w", r.Name, err)
}

// checkpointImage finds checkpoint image ref in the store, or pulls it
// (verified against x with trust), checking that it is a checkpoint
// before any layer moves; beforePull, when set, may refuse the pull. For
// a lazy restore, an image not in the store may be left in its registry
// (source.remote).
func (e *Engine) checkpointImage(ctx context.Context, ref string, o registry.Options, x *provenance.Expect, lazy bool, beforePull func() error) (*source, error) {
	src := &source{e: e}
	i, err := e.localCheckpointImage(ref, o, x)
	if errors.Is(err, errNotLocal) && beforePull != nil {
		err = beforePull()
		if err == nil {
			err = errNotLocal
		}
	}
	if errors.Is(err, errNotLocal) {
		i, err = e.fetchCheckpointImage(ctx, src, ref, o, x, lazy)
		if err == nil && src.remote != nil {
			return src, nil
		}
	}
	if err != nil {
		return nil, err
	}
	src.image, _ = checkpointimage.Read(i.Annotations)
	if src.image != nil {
		src.indexDigest = src.image.IndexDigest
	}
	if src.archive, err = e.Images.LayerPath(i); err != nil {
		return nil, errors.Join(err, src.rollback())
	}
	src.digest = blobDigest(src.archive)
	img, err := e.Images.Image(i)
	if err != nil {
		return nil, errors.Join(err, src.rollback())
	}
	if m, err := img.Manifest(); err == nil && len(m.Layers) == 1 && checkpointimage.IsEncrypted(m.Layers[0].MediaType) {
		src.encryptedLayer = &m.Layers[0]
	}
	return src, nil
}

// fetchCheckpointImage pulls checkpoint image ref into the store, adding
// what it pulled to src.pulled; or, for a lazy restore, when its archive
// can be read where it lies in the registry (registrySource), fills in src
// for that and returns no image.
func (e *Engine) fetchCheckpointImage(ctx context.Context, src *source, ref string, o registry.Options, x *provenance.Expect, lazy bool) (*image.Image, error) {
	img, m, err := remoteCheckpointImage(ctx, ref, o)
	if err != nil {
		return nil, err
	}
	if lazy {
		if ok, err := e.registrySource(ctx, src, ref, img, m, o, x); ok || err != nil {
			return nil, err
		}
	}
	i, sig, err := e.pull(ctx, ref, ref, img, x, o)
	if err != nil {
		return nil, err
	}
	src.pulled = append(src.pulled, i.Name)
	if sig != nil {
		src.pulled = append(src.pulled, sig.Name)
	}
	return i, nil
}

// blobDigest is the digest a content-addressed blob's name says it has.
func blobDigest(path string) string {
	return "sha256:" + filepath.Base(path)
}
