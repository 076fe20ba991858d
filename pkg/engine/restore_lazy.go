package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

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

// extractIndexed unpacks an indexed archive through its index: every member
// but the pages images as usual (archive.ExtractExcept), then the pages
// images on their own. Eager, each is written whole, its frames decompressed
// on every core (archive.Seekable.CopyMember). Lazy, only what `criu
// restore` reads itself is written (pages.WriteResident): the lazy memory
// stays in the archive, where the lazy-pages helper reads it through the
// same index, and the returned ArchivePages say where. It returns
// archive.ErrNoIndex for an archive without an index (gzip, none, another
// engine's), which the caller then unpacks whole.
func (e *Engine) extractIndexed(ctx context.Context, src *source, work string, lazy bool) (_ archive.Dir, _ *criu.ArchivePages, err error) {
	f, err := os.Open(src.archive)
	if err != nil {
		return "", nil, err
	}
	defer func() {
		if err != nil || !lazy {
			f.Close()
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return "", nil, err
	}
	s, err := archive.OpenSeekable(f, fi.Size(), src.indexDigest)
	if err != nil {
		return "", nil, err
	}
	dir, spans, err := archive.ExtractExcept(ctx, s, work, archive.ReadOptions{MaxUnpack: e.maxUnpack}, isPagesImage)
	if err != nil {
		return "", nil, fmt.Errorf("archive %s: %w", src.archive, err)
	}
	if err := e.linkRootfsDiff(src, dir); err != nil {
		return "", nil, err
	}
	limit, err := untar.Limit(work, e.maxUnpack)
	if err != nil {
		return "", nil, err
	}
	if !lazy {
		return dir, nil, writePagesImages(ctx, s, dir, spans, limit)
	}
	ap := &criu.ArchivePages{File: f, IndexDigest: s.Index().Digest, Spans: map[string]archive.Span{}}
	images := map[string]pages.Image{}
	for name, sp := range spans {
		images[path.Base(name)] = s.Member(sp)
		ap.Spans[path.Base(name)] = sp
	}
	memory, err := pages.OpenSource(dir.Images(), images)
	if err != nil {
		return "", nil, fmt.Errorf("archive %s: %w: %w", src.archive, archive.ErrInvalid, err)
	}
	if _, err := pages.WriteResident(dir.Images(), memory, images, limit); err != nil {
		return "", nil, fmt.Errorf("archive %s: %w", src.archive, err)
	}
	return dir, ap, nil
}

// writePagesImages writes the pages images left out of the unpacking, whole.
func writePagesImages(ctx context.Context, s *archive.Seekable, dir archive.Dir, spans map[string]archive.Span, limit int64) error {
	var total int64
	for _, sp := range spans {
		total += sp.Size
	}
	if total > limit {
		return fmt.Errorf("%w: its pages images take %d bytes, %d may be written", untar.ErrTooLarge, total, limit)
	}
	for name, sp := range spans {
		f, err := os.OpenFile(filepath.Join(string(dir), name), os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		err = s.CopyMember(ctx, f, sp)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// isPagesImage picks CRIU's pages images (checkpoint/pages-N.img) out of
// an archive's members.
func isPagesImage(name string) bool {
	dir, base := path.Split(name)
	return dir == archive.CheckpointDir+"/" && strings.HasPrefix(base, "pages-") && strings.HasSuffix(base, ".img")
}

// errNoIndex says whether an indexed unpacking found no index to work with.
func errNoIndex(err error) bool { return errors.Is(err, archive.ErrNoIndex) }
