package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"filippo.io/age"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/inspect"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/rootfs"
	"github.com/stasis-dev/stasis/pkg/store"
)

// Sink is where a dump's archive goes: a store entry (StoreSink), a file
// (FileSink) or a checkpoint image (ImageSink). A dump is written once,
// to whichever sink its caller chose.
type Sink interface {
	// leaves says whether the archive leaves this node's store, which a
	// workload that must not migrate refuses.
	leaves() bool
	compression() archive.Compression
	// stage is where the archive may be begun before the dump (a
	// directory on the filesystem it ends up in; work is the dump's), ""
	// where it may not (encrypted: the pages cannot go in as they come).
	stage(work string) string
	// write writes d's archive, scratch being a prefix for files of its
	// own in the dump's work directory, and fills in d.res; undo removes
	// it again, when another subject's archive of the same dump failed.
	write(ctx context.Context, e *Engine, d *dumped, scratch string) (undo func() error, err error)
	// publish does what comes once every archive of the dump is written
	// (an image signed and pushed); a failure there keeps the archives.
	publish(ctx context.Context, e *Engine, d *dumped) error
}

// StoreSink keeps the checkpoint in the node's checkpoint store.
type StoreSink struct {
	Compression archive.Compression
	Recipients  []age.Recipient
	// ShareRootfs keeps the rootfs diff beside the archive, shared with
	// every stored checkpoint with the same diff: a timeline stores an
	// unchanged diff once.
	ShareRootfs bool
}

// FileSink writes the archive to Path, and its digest beside it.
type FileSink struct {
	Path        string
	Compression archive.Compression
	// Recipients encrypt the archive (age X25519): only their identities
	// restore or inspect it.
	Recipients []age.Recipient
}

// ImageSink stores the checkpoint as checkpoint image Name, then signs and
// pushes it as asked (see Publish).
type ImageSink struct {
	Name        string
	Compression archive.Compression
	// Keys encrypt the layer (public keys, PEM; ocicrypt).
	Keys [][]byte
	// Signer signs the image (pkg/provenance) with Claims, before it is
	// pushed so that the signature travels with it.
	Signer signature.Signer
	Claims provenance.Claims
	// Push sends it to PushTo (by default, Name) in its registry.
	Push     bool
	PushTo   string
	Registry registry.Options
	// Local says the image is the node's own until pushed: a pod
	// checkpoint's, which the agent keeps for its node's restores. An
	// image the CLI makes is made to travel, so it counts as leaving the
	// node, pushed or not.
	Local bool
}

func (s StoreSink) leaves() bool                     { return false }
func (s FileSink) leaves() bool                      { return true }
func (s ImageSink) leaves() bool                     { return !s.Local || s.Push }
func (s StoreSink) compression() archive.Compression { return orZstd(s.Compression) }

// The store's entries are written next to the engine's work directories.
func (s StoreSink) stage(work string) string { return unlessEncrypted(s.Recipients, work) }
func (s FileSink) stage(string) string {
	abs, err := filepath.Abs(s.Path)
	if err != nil {
		return ""
	}
	return unlessEncrypted(s.Recipients, filepath.Dir(abs))
}

// An image's layer is encrypted from the plain archive, once written.
func (s ImageSink) stage(work string) string { return work }

func unlessEncrypted(recipients []age.Recipient, dir string) string {
	if len(recipients) > 0 {
		return ""
	}
	return dir
}
func (s FileSink) compression() archive.Compression {
	if s.Compression == "" {
		return archive.CompressionFor(s.Path, archive.Zstd)
	}
	return s.Compression
}
func (s ImageSink) compression() archive.Compression { return orZstd(s.Compression) }

func orZstd(c archive.Compression) archive.Compression {
	if c == "" {
		return archive.Zstd
	}
	return c
}

func (s StoreSink) write(ctx context.Context, e *Engine, d *dumped, _ string) (func() error, error) {
	if !d.Subject.own {
		// The store's checkpoints are restored with their spec as recorded.
		return nil, fmt.Errorf("only the engine's own containers are kept in its checkpoint store")
	}
	members := archive.Members
	summary := summarize(d.dir, d.res.CRIU, s.ShareRootfs)
	shared := ""
	if _, err := os.Stat(filepath.Join(d.dir, archive.RootfsDiff)); err == nil && s.ShareRootfs {
		shared = filepath.Join(d.dir, archive.RootfsDiff)
		members = without(members, archive.RootfsDiff)
		// Unchanged since the last checkpoint: share that one's diff.
		if prev, err := store.Latest(e.Checkpoints, d.Subject.ID); err == nil && prev.RootfsDiff != "" &&
			prev.Summary != nil && prev.Summary.RootfsDigest == summary.RootfsDigest {
			shared = prev.RootfsDiff
		}
	}
	var ws *archive.WriteStats
	cfg := d.Subject.Config
	ent, err := e.Checkpoints.Put(store.Entry{
		ContainerID: d.Subject.ID, ContainerName: cfg.Name, Image: cfg.RootfsImageName, Created: time.Now().UTC(),
		Compression: string(s.compression()), RootfsDiff: shared, Summary: summary,
	}, archiveName(s.compression()), func(dest string) (store.Written, error) {
		var err error
		if ws, err = writeArchive(d, dest, s.compression(), s.Recipients, members); err != nil {
			return store.Written{}, err
		}
		return store.Written{Size: ws.Bytes, Digest: ws.Digest, IndexDigest: ws.IndexDigest}, nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	d.res.Archive, d.res.StoreID = ent.Archive, ent.ID
	return func() error { return e.Checkpoints.Delete(ent.ID) }, nil
}

func (s FileSink) write(ctx context.Context, e *Engine, d *dumped, _ string) (func() error, error) {
	ws, err := writeArchive(d, s.Path, s.compression(), s.Recipients, archive.Members)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", s.Path, err)
	}
	d.res.Archive, _ = filepath.Abs(s.Path)
	undo := func() error {
		return errors.Join(os.Remove(d.res.Archive), ignoreMissing(os.Remove(d.res.Archive+archive.DigestSuffix)))
	}
	if err := archive.WriteDigestFile(d.res.Archive, ws.Digest, ws.IndexDigest); err != nil {
		return nil, errors.Join(err, undo())
	}
	return undo, nil
}

func (s ImageSink) write(ctx context.Context, e *Engine, d *dumped, scratch string) (func() error, error) {
	layer := scratch + archiveName(s.compression())
	if _, err := writeArchive(d, layer, s.compression(), nil, archive.Members); err != nil {
		return nil, err
	}
	img, err := e.BuildCheckpointImage(layer, s.Name, true, s.Keys)
	if err != nil {
		return nil, err
	}
	d.res.Image = img.Name
	undo := func() error { return e.Images.Remove(img.Name) }
	if d.res.Archive, err = e.Images.LayerPath(img); err != nil {
		return nil, errors.Join(err, undo())
	}
	return undo, nil
}

func (s StoreSink) publish(context.Context, *Engine, *dumped) error { return nil }
func (s FileSink) publish(context.Context, *Engine, *dumped) error  { return nil }

func (s ImageSink) publish(ctx context.Context, e *Engine, d *dumped) (err error) {
	t := time.Now()
	if d.res.Pushed, err = e.Publish(ctx, d.res.Image, s); err != nil {
		return err
	}
	if s.Push {
		d.res.Phases.Add("push", time.Since(t))
	}
	return nil
}

func ignoreMissing(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Publish does what an ImageSink does once the checkpoint image is stored:
// it signs the image with s.Signer unless it has a signature already, and
// pushes it when s.Push says so, returning the pushed manifest's digest.
// A checkpoint stored earlier (a repeated request) is published by it too.
func (e *Engine) Publish(ctx context.Context, name string, s ImageSink) (digest string, err error) {
	if s.Signer != nil {
		_, err := e.Signature(name)
		switch {
		case errors.Is(err, image.ErrNotFound):
			c := s.Claims
			if c.Time.IsZero() {
				c.Time = time.Now()
			}
			if err := e.SignImage(name, s.Signer, c); err != nil {
				return "", err
			}
		case err != nil:
			return "", err
		}
	}
	if !s.Push {
		return "", nil
	}
	if digest, err = e.Push(ctx, name, s.PushTo, s.Registry); err != nil {
		return "", fmt.Errorf("the checkpoint image %s is stored here but: %w", name, err)
	}
	return digest, nil
}

// writeArchive writes d's members (and its captured pages) as one archive:
// the archive the dump began, when it began one (the pages are in it).
func writeArchive(d *dumped, dest string, c archive.Compression, recipients []age.Recipient, members []string) (*archive.WriteStats, error) {
	contents := archive.Contents{Dir: d.dir, Members: members, Captured: d.pages.captured}
	var ws *archive.WriteStats
	var err error
	if b := d.pages.begun; b != nil {
		d.pages.begun = nil // finished or failed, it is gone
		ws, err = b.Finish(dest, contents)
	} else {
		ws, err = archive.WriteFile(dest, contents, archive.WriteOptions{Compression: c, Recipients: recipients})
	}
	if err != nil {
		return nil, err
	}
	d.res.Size, d.res.Digest = ws.Bytes, ws.Digest
	d.res.Phases.Add("archive", ws.Archive)
	d.res.Phases.Add("compress", ws.Compress)
	d.res.Phases.Add("write", ws.Write)
	return ws, nil
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
