package engine

import (
	"context"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/pages"
	"github.com/stasis-dev/stasis/pkg/untar"
)

// indexTrusted says whether src's archive may be read through its frame
// index, each frame checked against it, rather than checked whole: the
// index must be one src vouches for (or src vouches for nothing, and the
// whole archive would not be checked either).
func indexTrusted(src *source) bool {
	return src.encryptedLayer == nil && (src.indexDigest != "" || src.digest == "")
}

// extractLazy unpacks an indexed archive but for its pages images, and of
// those writes only what `criu restore` reads itself (pages.WriteResident):
// the lazy memory stays in the archive, where the lazy-pages helper reads
// it through the same index. It returns archive.ErrNoIndex for an archive
// without an index (gzip, none, another engine's), which the caller then
// unpacks whole.
func (e *Engine) extractLazy(ctx context.Context, src *source, work string) (_ archive.Dir, _ *criu.ArchivePages, err error) {
	f, s, err := openIndexed(ctx, src, work)
	if err != nil {
		return "", nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	dir, spans, err := archive.ExtractExcept(ctx, s, work, archive.ReadOptions{MaxUnpack: e.maxUnpack}, isPagesImage)
	if err != nil {
		return "", nil, err // unpack names the archive
	}
	if err := e.linkRootfsDiff(src, dir); err != nil {
		return "", nil, err
	}
	limit, err := untar.Limit(work, e.maxUnpack)
	if err != nil {
		return "", nil, err
	}
	ap := &criu.ArchivePages{File: f, IndexDigest: s.Index().Digest, Spans: map[string]archive.Span{}}
	images := map[string]pages.Image{}
	for name, sp := range spans {
		images[path.Base(name)] = s.Member(sp)
		ap.Spans[path.Base(name)] = sp
	}
	memory, err := pages.OpenSource(dir.Images(), images)
	if err == nil {
		err = memory.MakeEager(dir.Images(), pages.DefaultEager)
	}
	if err != nil {
		return "", nil, fmt.Errorf("archive %s: %w: %w", src.archive, archive.ErrInvalid, err)
	}
	if _, err := pages.WriteResident(dir.Images(), memory, images, limit); err != nil {
		return "", nil, fmt.Errorf("archive %s: %w", src.archive, err)
	}
	if src.remote != nil {
		if ap.Fetch, err = src.remote.helperFetch(); err != nil {
			return "", nil, err
		}
	}
	return dir, ap, nil
}

// isPagesImage picks CRIU's pages images (checkpoint/pages-N.img) out of
// an archive's members.
func isPagesImage(name string) bool {
	dir, base := path.Split(name)
	return dir == archive.CheckpointDir+"/" && strings.HasPrefix(base, "pages-") && strings.HasSuffix(base, ".img")
}

// openIndexed opens src's archive for reading through its frame index,
// which must be the one src vouches for; archive.ErrNoIndex when it has
// none. An archive in its registry arrives into work. The caller closes
// the file.
func openIndexed(ctx context.Context, src *source, work string) (*os.File, *archive.Seekable, error) {
	if src.remote != nil {
		return openRemoteIndexed(ctx, src, work)
	}
	f, err := os.Open(src.archive)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	s, err := archive.OpenSeekable(f, fi.Size(), src.indexDigest)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, s, nil
}
