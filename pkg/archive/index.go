package archive

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
)

// A zstd archive of stasis' ends with an index of its frames, so a reader
// can reach any byte of the tar by decompressing only the frame that holds
// it (Seekable): a lazy restore serves memory pages from the archive where
// it lies, without unpacking it.
//
// The index is two skippable frames (RFC 8878, 3.1.2), which every zstd
// reader passes over:
//
//   - the frames' SHA-256 digests, one per frame, 32 bytes each, in a
//     skippable frame of magic 0x184D2A53;
//   - then, last in the file, the zstd seekable format's seek table
//     (facebook/zstd contrib/seekable_format): per frame its compressed
//     and decompressed size, and a footer with the frame count and the
//     magic 0x8F92EAB1, so the seekable-format tools read it as well.
//
// The digests are what let a reader trust a frame without reading the
// rest: the index's own sha256 (IndexDigest) is recorded where the
// archive's digest is (a store entry, the .sha256 file beside an export),
// and every frame read is checked against its digest in the index.
//
// The seekable format's library for Go (SaveTheRbtz/zstd-seekable-format-go)
// writes each frame itself; stasis compresses frames on every core and
// splices in frames compressed while CRIU dumped, so it writes the table
// here, and reads it with the digests it needs besides.
const (
	digestsMagic   = 0x184D2A53
	seekTableMagic = 0x184D2A5E
	seekableMagic  = 0x8F92EAB1
	skipHeader     = 8 // magic, frame size
	seekFooter     = 9 // frame count, descriptor, seekable magic
	// maxFrameSize bounds a frame's decompressed size as the index claims
	// it: a reader allocates it. stasis writes 1 MiB frames (4 MiB
	// before), and reads any up to this.
	maxFrameSize = 16 << 20
)

// Frame is one zstd frame of an archive, as its index records it.
type Frame struct {
	Compressed uint32 // bytes in the file
	Size       uint32 // bytes once decompressed
	Digest     [32]byte
}

// Index is where each frame of an archive lies, in the file and in the tar
// stream it decompresses to.
type Index struct {
	Frames []Frame
	// offsets[i] is frame i's start in the file, starts[i] its start in the
	// tar stream; each has one more entry, the end.
	offsets, starts []int64
	// Digest is the sha256 of the index's bytes (IndexDigest).
	Digest string
}

// encodeIndex is the index of frames, as it ends the archive.
func encodeIndex(frames []Frame) []byte {
	n := len(frames)
	b := make([]byte, 0, 2*skipHeader+n*(32+8)+seekFooter)
	b = binary.LittleEndian.AppendUint32(b, digestsMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(32*n))
	for _, f := range frames {
		b = append(b, f.Digest[:]...)
	}
	b = binary.LittleEndian.AppendUint32(b, seekTableMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(8*n+seekFooter))
	for _, f := range frames {
		b = binary.LittleEndian.AppendUint32(b, f.Compressed)
		b = binary.LittleEndian.AppendUint32(b, f.Size)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	b = append(b, 0) // descriptor: no per-frame checksums in the table
	return binary.LittleEndian.AppendUint32(b, seekableMagic)
}

// ErrNoIndex is returned for an archive that has no frame index of
// stasis': gzip, uncompressed, encrypted, another engine's zstd, or a zstd
// seekable archive of another tool (no frame digests).
var ErrNoIndex = errors.New("archive has no frame index")

// maxFrames bounds the frames an index may claim (4 TiB of 1 MiB frames):
// a reader allocates 40 bytes a frame.
const maxFrames = 1 << 22

// ReadIndex reads the index at the end of an archive of size bytes. It
// checks that the index describes the whole file; whether to believe it is
// the caller's to decide, by its Digest. Nothing is allocated for the
// frames before the index's framing checks out.
func ReadIndex(r io.ReaderAt, size int64) (*Index, error) {
	le := binary.LittleEndian
	if size < 2*skipHeader+seekFooter {
		return nil, ErrNoIndex
	}
	var foot [seekFooter]byte
	if _, err := r.ReadAt(foot[:], size-seekFooter); err != nil {
		return nil, fmt.Errorf("read frame index: %w", err)
	}
	if le.Uint32(foot[5:]) != seekableMagic || foot[4] != 0 {
		return nil, ErrNoIndex // a seek table with checksums is another tool's
	}
	n := int64(le.Uint32(foot[:4]))
	indexSize := 2*skipHeader + n*(32+8) + seekFooter
	if n > maxFrames || indexSize > size {
		return nil, ErrNoIndex
	}
	// The two skippable frames' headers, where n says they are.
	var table, digests [skipHeader]byte
	if _, err := r.ReadAt(table[:], size-seekFooter-8*n-skipHeader); err != nil {
		return nil, fmt.Errorf("read frame index: %w", err)
	}
	if _, err := r.ReadAt(digests[:], size-indexSize); err != nil {
		return nil, fmt.Errorf("read frame index: %w", err)
	}
	if le.Uint32(table[:]) != seekTableMagic || int64(le.Uint32(table[4:])) != 8*n+seekFooter ||
		le.Uint32(digests[:]) != digestsMagic || int64(le.Uint32(digests[4:])) != 32*n {
		return nil, ErrNoIndex
	}
	b := make([]byte, indexSize)
	if _, err := r.ReadAt(b, size-indexSize); err != nil {
		return nil, fmt.Errorf("read frame index: %w", err)
	}
	sum := sha256.Sum256(b)
	ix := &Index{Frames: make([]Frame, n), offsets: make([]int64, n+1), starts: make([]int64, n+1), Digest: digestOfSum(sum)}
	entries := b[2*skipHeader+32*n:]
	for i := range ix.Frames {
		f := &ix.Frames[i]
		copy(f.Digest[:], b[skipHeader+32*i:])
		f.Compressed, f.Size = le.Uint32(entries[8*i:]), le.Uint32(entries[8*i+4:])
		if f.Compressed == 0 || f.Size > maxFrameSize {
			return nil, fmt.Errorf("%w: frame %d of the index: %d bytes, %d decompressed", ErrInvalid, i, f.Compressed, f.Size)
		}
		ix.offsets[i+1] = ix.offsets[i] + int64(f.Compressed)
		ix.starts[i+1] = ix.starts[i] + int64(f.Size)
	}
	if ix.offsets[n] != size-indexSize {
		return nil, fmt.Errorf("%w: frame index covers %d bytes of %d", ErrInvalid, ix.offsets[n], size-indexSize)
	}
	return ix, nil
}

// IndexDigestOf is the digest of the index of the archive file at path;
// ErrNoIndex when it has none.
func IndexDigestOf(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	ix, err := ReadIndex(f, fi.Size())
	if err != nil {
		return "", err
	}
	return ix.Digest, nil
}

// Size is the length of the tar stream the frames decompress to.
func (ix *Index) Size() int64 { return ix.starts[len(ix.Frames)] }

// frameAt is the frame holding byte off of the tar stream.
func (ix *Index) frameAt(off int64) int {
	lo, hi := 0, len(ix.Frames)
	for lo < hi { // the last frame starting at or before off
		m := (lo + hi) / 2
		if ix.starts[m+1] <= off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// digestOfSum is a sha256 as stasis writes digests: "sha256:<hex>".
func digestOfSum(sum [32]byte) string { return "sha256:" + hex.EncodeToString(sum[:]) }
