package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/checkpointimage"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/registry"
)

// A lazy restore of a checkpoint image the store lacks reads the archive
// where it lies, in its registry: the restore reads the metadata members
// and the memory CRIU restores itself by range requests, then the
// lazy-pages helper serves the rest the same way, as the tasks touch it,
// while it fetches the whole blob in order behind. Every byte read lands
// in one file (image.Partial), so nothing is fetched twice; once complete
// and matching its digest, it goes into the store with its image.

// registryArchive is a checkpoint image's archive left in its registry.
type registryArchive struct {
	blob  *registry.Blob
	fetch registryFetch
	// partial is the blob arriving, once the restore opened it.
	partial *image.Partial
}

// registryFetch is what the lazy-pages helper needs to go on fetching the
// blob, and to store it when complete (criu.ArchivePages.Fetch).
type registryFetch struct {
	// Layer and Size are the image's archive's.
	Layer string `json:"layer"`
	Size  int64  `json:"size"`
	// TLSVerify, Creds and Pinned are the registry.Options the restore
	// had.
	TLSVerify bool             `json:"tls_verify"`
	Creds     string           `json:"creds,omitempty"`
	Pinned    *registry.Pinned `json:"pinned,omitempty"`
	// Have are the chunks the restore fetched already (image.Partial).
	Have [][2]int `json:"have"`
	// Path is the partial blob's file; Store the image store it goes to.
	Path  string `json:"path"`
	Store string `json:"store"`
	// Commit are the images the store gets, in order, once the blob is
	// there: the checkpoint image (whose repository the blob is fetched
	// from), then its signature image.
	Commit []fetchedImage `json:"commit"`
}

// ref is the checkpoint image, by its manifest's digest.
func (rf *registryFetch) ref() string { return rf.Commit[0].Ref }

// fetchedImage is an image to store under Name, fetched by digest from Ref.
type fetchedImage struct {
	Name string `json:"name"`
	Ref  string `json:"ref"`
}

// registrySource makes src the archive of checkpoint image img (ref's,
// manifest m) where it lies in the registry, and says whether it did: it
// does not for an archive without a frame index the image vouches for, an
// encrypted one, or a registry that serves no byte ranges; those are
// pulled whole. The signature is verified first, as a pull does.
func (e *Engine) registrySource(ctx context.Context, src *source, ref string, img v1.Image, m *v1.Manifest, o registry.Options, x *provenance.Expect) (bool, error) {
	info, _ := checkpointimage.Read(m.Annotations)
	if info == nil || info.IndexDigest == "" || len(m.Layers) != 1 || checkpointimage.IsEncrypted(m.Layers[0].MediaType) {
		return false, nil
	}
	layer := m.Layers[0]
	if layer.Size <= 0 || (e.maxUnpack > 0 && layer.Size > e.maxUnpack) {
		return false, nil // a pull says what is wrong with it
	}
	digest, sig, err := e.verifyRemote(ctx, ref, img, m, x, o)
	if err != nil {
		return false, err
	}
	blob, err := registry.OpenBlob(ctx, ref, layer.Digest, layer.Size, o)
	if errors.Is(err, registry.ErrNoRanges) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	r, err := registry.ParseReference(ref, o)
	if err != nil {
		return false, err
	}
	repo := r.Context()
	name := image.NormalizeName(ref)
	fetch := registryFetch{
		Layer: layer.Digest.String(), Size: layer.Size,
		TLSVerify: o.TLSVerify, Creds: o.Creds, Pinned: o.Pinned, Store: e.Images.Dir(),
		Commit: []fetchedImage{{Name: name, Ref: repo.Digest(digest.String()).String()}},
	}
	if sig != nil {
		sd, err := sig.Digest()
		if err != nil {
			return false, fmt.Errorf("pull %s: signature: %w", ref, err)
		}
		fetch.Commit = append(fetch.Commit, fetchedImage{Name: signatureName(name, digest), Ref: repo.Digest(sd.String()).String()})
	}
	src.archive = fmt.Sprintf("%s (layer %s, in the registry)", ref, layer.Digest)
	src.digest = layer.Digest.String()
	src.image, src.indexDigest = info, info.IndexDigest
	src.remote = &registryArchive{blob: blob, fetch: fetch}
	return true, nil
}

// open starts the partial blob in the restore's work directory, fetched
// until ctx is done: the helper inherits it, and a failed restore removes
// it with the directory.
func (ra *registryArchive) open(ctx context.Context, work string) (*os.File, *image.Partial, error) {
	path := filepath.Join(work, ".blob")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, nil, err
	}
	// The whole blob arrives behind the process: the room for it is taken
	// now, when a full disk is still an error and not a killed process.
	if err := unix.Fallocate(int(f.Fd()), 0, 0, ra.fetch.Size); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("room for the checkpoint's %d bytes beside the restore: %w", ra.fetch.Size, err)
	}
	p, err := image.NewPartial(ctx, f, ra.fetch.Size, ra.blob, nil)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	ra.fetch.Path, ra.partial = path, p
	return f, p, nil
}

// helperFetch is ArchivePages.Fetch: what the helper needs to go on from
// where the restore's reads left the blob.
func (ra *registryArchive) helperFetch() (json.RawMessage, error) {
	ra.fetch.Have = ra.partial.Have()
	return json.Marshal(ra.fetch)
}

// LazyPagesMain is the lazy-pages helper (criu.LazyPagesMain) of the
// stasis binary and of stasis-runc, which serves pages from archive files
// and from checkpoint images still arriving from their registry.
func LazyPagesMain() int { return criu.LazyPagesMain(openArchivePages) }

// openArchivePages is the helper's criu.ArchiveOpener: an archive file as
// it is, or a blob from a registry, fetched in the background and stored
// with its images once every page was served and it is complete.
func openArchivePages(f *os.File, a *criu.ArchivePages) (io.ReaderAt, int64, func(bool) error, error) {
	if a.Fetch == nil {
		return criu.OpenArchiveFile(f, a)
	}
	var rf registryFetch
	if err := json.Unmarshal(a.Fetch, &rf); err != nil || len(rf.Commit) == 0 {
		return nil, 0, nil, fmt.Errorf("registry fetch: %w (%d images)", err, len(rf.Commit))
	}
	h, err := v1.NewHash(rf.Layer)
	if err != nil {
		return nil, 0, nil, err
	}
	o := registry.Options{TLSVerify: rf.TLSVerify, Creds: rf.Creds, Pinned: rf.Pinned}
	ctx, cancel := context.WithCancel(context.Background())
	blob, err := registry.OpenBlob(ctx, rf.ref(), h, rf.Size, o)
	if err != nil {
		cancel()
		return nil, 0, nil, err
	}
	p, err := image.NewPartial(ctx, f, rf.Size, blob, rf.Have)
	if err != nil {
		cancel()
		return nil, 0, nil, err
	}
	filled := make(chan error, 1)
	go func() { filled <- p.Fill(ctx) }()
	finish := func(served bool) error {
		if !served {
			cancel()
			<-filled
			return nil
		}
		defer cancel()
		if err := <-filled; err != nil {
			return fmt.Errorf("fetch %s: %w", rf.ref(), err)
		}
		return storeFetched(ctx, p, rf, h, o)
	}
	return p, rf.Size, finish, nil
}

// storeFetched puts the complete blob p and the images rf names into the
// store, fetching their manifests and configs again by digest. A name the
// store gave to another image meanwhile (a pull) keeps it; a blob no image
// came to use goes again.
func storeFetched(ctx context.Context, p *image.Partial, rf registryFetch, layer v1.Hash, o registry.Options) error {
	store, err := image.Open(rf.Store)
	if err != nil {
		return err
	}
	added, err := store.AddPartial(p, rf.Path, layer)
	if err != nil {
		return fmt.Errorf("store %s: %w", rf.ref(), err)
	}
	for i, c := range rf.Commit {
		_, digest, _ := strings.Cut(c.Ref, "@")
		if had, err := store.Get(c.Name); err == nil && had.Digest != digest {
			continue
		}
		img, err := registry.Image(ctx, c.Ref, o)
		if err == nil {
			_, err = store.Add(c.Name, img, nil)
		}
		if err != nil {
			if i == 0 && added != "" {
				os.Remove(added)
			}
			return fmt.Errorf("store %s: %w", c.Name, err)
		}
	}
	return nil
}

// openRemoteIndexed is openIndexed for an archive in its registry.
func openRemoteIndexed(ctx context.Context, src *source, work string) (*os.File, *archive.Seekable, error) {
	f, p, err := src.remote.open(ctx, work)
	if err != nil {
		return nil, nil, err
	}
	s, err := archive.OpenSeekable(p, p.Size(), src.indexDigest)
	if errors.Is(err, archive.ErrNoIndex) {
		err = fmt.Errorf("%w: the image says its archive has a frame index, and it has none", archive.ErrInvalid)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, s, nil
}
