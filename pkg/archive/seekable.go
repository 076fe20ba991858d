package archive

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/stasis-dev/stasis/pkg/untar"
)

// Seekable reads an indexed zstd archive's tar stream at any offset,
// decompressing only the frames it needs, each checked against its digest
// in the index before it is decompressed. Its source is any io.ReaderAt of
// the archive's bytes: a file, a store entry, a registry blob read by range.
// It is safe for concurrent use.
type Seekable struct {
	src io.ReaderAt
	ix  *Index
	dec *zstd.Decoder
	// vouched is set when the index is the one recorded: a frame that
	// differs from it was altered (ErrDigest), not merely damaged.
	vouched bool

	mu sync.Mutex
	// cache holds the last frames decompressed, most recent last; loading
	// those being decompressed, so two readers of a frame wait for one.
	// Readers copy out of the cache under mu, so an evicted frame's buffer
	// is free at once: spare keeps it, and spareComp the buffers compressed
	// frames were read into, for the next frames. A page server then
	// allocates nothing per frame, and its collector stays idle under a
	// tight memory limit.
	cache     []cachedFrame
	keep      int
	loading   map[int]*loadingFrame
	spare     [][]byte
	spareComp [][]byte
}

type cachedFrame struct {
	i    int
	data []byte
}

type loadingFrame struct {
	done chan struct{}
	err  error
}

// cachedFrames is how many decompressed frames a Seekable keeps unless
// told otherwise (KeepFrames): a few, so that readers and their read-ahead
// share them, in bounded memory.
const cachedFrames = 4

// ErrIndexDigest is returned when an archive's index is not the one recorded.
var ErrIndexDigest = errors.New("archive's frame index is not the one recorded")

// OpenSeekable reads the index of the size-byte archive in src. With a
// non-empty digest, the index must have it (IndexDigest), and then every
// frame read is the one written; without, frames are only checked to be
// what the index itself says.
func OpenSeekable(src io.ReaderAt, size int64, digest string) (*Seekable, error) {
	ix, err := ReadIndex(src, size)
	if err != nil {
		return nil, err
	}
	if digest != "" && ix.Digest != digest {
		return nil, fmt.Errorf("%w: %s, recorded %s", ErrIndexDigest, ix.Digest, digest)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithDecoderMaxWindow(MaxZstdWindow),
		zstd.WithDecoderMaxMemory(maxFrameSize))
	if err != nil {
		return nil, err
	}
	return &Seekable{src: src, ix: ix, dec: dec, vouched: digest != "", keep: cachedFrames, loading: map[int]*loadingFrame{}}, nil
}

// KeepFrames sets how many decompressed frames s keeps (at least one): a
// page server that reads mostly in order needs the frame it reads and the
// one it prefetches.
func (s *Seekable) KeepFrames(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keep = max(n, 1)
	if len(s.cache) > s.keep {
		s.cache = s.cache[len(s.cache)-s.keep:]
	}
}

// Index is the archive's frame index.
func (s *Seekable) Index() *Index { return s.ix }

// Size is the length of the tar stream.
func (s *Seekable) Size() int64 { return s.ix.Size() }

// ReadAt reads the tar stream.
func (s *Seekable) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("archive: negative offset %d", off)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= s.Size() {
			return n, io.EOF
		}
		i := s.ix.frameAt(pos)
		k, err := s.copyFrame(i, p[n:], pos-s.ix.starts[i])
		if err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}

// Prefetch decompresses, in the background, the frame that holds off:
// a reader going forward finds it ready.
func (s *Seekable) Prefetch(off int64) {
	if off >= 0 && off < s.Size() {
		go s.copyFrame(s.ix.frameAt(off), nil, 0) //nolint:errcheck // a reader that needs it sees the error
	}
}

// copyFrame copies frame i, decompressed, from at into p, loading it into
// the cache first when it is not there.
func (s *Seekable) copyFrame(i int, p []byte, at int64) (int, error) {
	s.mu.Lock()
	for {
		for k, c := range s.cache {
			if c.i == i {
				s.cache = append(append(s.cache[:k:k], s.cache[k+1:]...), c)
				n := copy(p, c.data[at:])
				s.mu.Unlock()
				return n, nil
			}
		}
		l, ok := s.loading[i]
		if !ok {
			break
		}
		s.mu.Unlock()
		<-l.done
		if l.err != nil {
			return 0, l.err
		}
		s.mu.Lock() // evicted already, it is loaded again
	}
	l := &loadingFrame{done: make(chan struct{})}
	s.loading[i] = l
	comp, data := takeSpare(&s.spareComp), takeSpare(&s.spare)
	s.mu.Unlock()

	comp, data, l.err = s.loadInto(i, comp, data)
	s.mu.Lock()
	defer s.mu.Unlock()
	defer close(l.done)
	delete(s.loading, i)
	s.spareComp = append(s.spareComp, comp)
	if l.err != nil {
		s.spare = append(s.spare, data)
		return 0, l.err
	}
	if len(s.cache) >= s.keep {
		for _, c := range s.cache[:len(s.cache)-s.keep+1] {
			s.spare = append(s.spare, c.data)
		}
		s.cache = s.cache[len(s.cache)-s.keep+1:]
	}
	s.cache = append(s.cache, cachedFrame{i: i, data: data})
	return copy(p, data[at:]), nil
}

// takeSpare takes a buffer from spare, nil when there is none.
func takeSpare(spare *[][]byte) []byte {
	if len(*spare) == 0 {
		return nil
	}
	b := (*spare)[len(*spare)-1]
	*spare = (*spare)[:len(*spare)-1]
	return b
}

// loadInto reads frame i into comp and decompresses it into data, reusing
// both when they are large enough, and returns them.
func (s *Seekable) loadInto(i int, comp, data []byte) ([]byte, []byte, error) {
	f := s.ix.Frames[i]
	if cap(comp) < int(f.Compressed) {
		comp = make([]byte, f.Compressed)
	}
	comp = comp[:f.Compressed]
	if _, err := s.src.ReadAt(comp, s.ix.offsets[i]); err != nil {
		return comp, data, fmt.Errorf("read frame %d: %w", i, err)
	}
	if sha256.Sum256(comp) != f.Digest {
		if !s.vouched {
			return comp, data, fmt.Errorf("%w: frame %d does not match its index", ErrInvalid, i)
		}
		return comp, data, fmt.Errorf("%w: frame %d does not match its digest", ErrDigest, i)
	}
	if cap(data) < int(f.Size) {
		data = make([]byte, 0, f.Size)
	}
	data, err := s.dec.DecodeAll(comp, data[:0])
	if err != nil {
		return comp, data, fmt.Errorf("%w: frame %d: %w", ErrInvalid, i, err)
	}
	if len(data) != int(f.Size) {
		return comp, data, fmt.Errorf("%w: frame %d decompresses to %d bytes, its index says %d", ErrInvalid, i, len(data), f.Size)
	}
	return comp, data, nil
}

// CopyMember writes the member at sp to w, from offset 0, its frames read,
// checked and decompressed on every core: an eager restore's pages images.
// Each worker reuses its own buffers (fresh ones per frame cost page
// faults that outweigh the decompression) and reads past the cache, which
// the frames would only flush.
func (s *Seekable) CopyMember(ctx context.Context, w io.WriterAt, sp Span) error {
	if !s.within(sp) {
		return fmt.Errorf("%w: member at %d+%d outside the %d-byte stream", ErrInvalid, sp.Offset, sp.Size, s.Size())
	}
	if sp.Size == 0 {
		return nil
	}
	first, last := s.ix.frameAt(sp.Offset), s.ix.frameAt(sp.Offset+sp.Size-1)
	next := make(chan int)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(next)
		for i := first; i <= last; i++ {
			select {
			case next <- i:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	for range runtime.GOMAXPROCS(0) {
		g.Go(func() error {
			var comp, data []byte
			for i := range next {
				var err error
				if comp, data, err = s.loadInto(i, comp, data); err != nil {
					return err
				}
				// The part of frame i inside the member.
				lo, hi := max(s.ix.starts[i], sp.Offset), min(s.ix.starts[i+1], sp.Offset+sp.Size)
				if _, err := w.WriteAt(data[lo-s.ix.starts[i]:hi-s.ix.starts[i]], lo-sp.Offset); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// Span is where a member's bytes lie in the tar stream.
type Span struct {
	Offset int64 `json:"offset"`
	Size   int64 `json:"size"`
}

// sparse reports a GNU sparse member, whose header states the size of the
// file it makes, not of the bytes the tar holds: its span is not its size.
func sparse(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// within reports whether sp lies inside the tar stream.
func (s *Seekable) within(sp Span) bool {
	return sp.Offset >= 0 && sp.Size >= 0 && sp.Size <= s.Size()-sp.Offset
}

// Member is one member of an indexed archive, read where it lies.
type Member struct {
	s  *Seekable
	sp Span
}

// Member reads the member at sp.
func (s *Seekable) Member(sp Span) *Member { return &Member{s: s, sp: sp} }

// Size is the member's length.
func (m *Member) Size() int64 { return m.sp.Size }

// ReadAt reads the member; past its end is io.EOF.
func (m *Member) ReadAt(p []byte, off int64) (int, error) {
	if !m.s.within(m.sp) {
		return 0, fmt.Errorf("%w: member at %d+%d outside the %d-byte stream", ErrInvalid, m.sp.Offset, m.sp.Size, m.s.Size())
	}
	if off < 0 || off >= m.sp.Size {
		return 0, io.EOF
	}
	short := int64(len(p)) > m.sp.Size-off
	if short {
		p = p[:m.sp.Size-off]
	}
	n, err := m.s.ReadAt(p, m.sp.Offset+off)
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

// Prefetch starts reading the member's bytes at off (pages.Prefetcher).
func (m *Member) Prefetch(off int64) {
	if off >= 0 && off < m.sp.Size {
		m.s.Prefetch(m.sp.Offset + off)
	}
}

// ExtractExcept unpacks the members of an indexed archive into dir as
// Extract does, except those skip picks, which it only locates: their
// bytes are neither read nor written, and stay where they are for a
// reader of s. It reads only the frames that hold what it unpacks.
func ExtractExcept(ctx context.Context, s *Seekable, dir string, o ReadOptions, skip func(name string) bool) (Dir, map[string]Span, error) {
	sr := io.NewSectionReader(s, 0, s.Size())
	spans := map[string]Span{}
	opts := untar.Options{Kind: untar.Members, MaxBytes: o.MaxUnpack, Skip: func(hdr *tar.Header, name string) bool {
		if hdr.Typeflag != tar.TypeReg || !skip(name) || sparse(hdr) {
			return false
		}
		// tar reads headers block by block, with no read-ahead: the
		// section's position is the member's first byte.
		off, _ := sr.Seek(0, io.SeekCurrent)
		if off < 0 || hdr.Size < 0 || hdr.Size > s.Size()-off {
			return false // unpacked, and refused as truncated
		}
		spans[name] = Span{Offset: off, Size: hdr.Size}
		return true
	}}
	if err := untar.Extract(ctx, sr, dir, opts); err != nil {
		return "", nil, unpackError(ctx, "archive", err)
	}
	d := Dir(dir)
	if err := d.Validate(); err != nil {
		return "", nil, err
	}
	return d, spans, nil
}
