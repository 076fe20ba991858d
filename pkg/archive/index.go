package archive

import (
	"crypto/sha256"
	"encoding/binary"
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
	// it: a reader allocates it. stasis writes 4 MiB frames.
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

// ErrNoIndex is returned for an archive that has no frame index: gzip,
// uncompressed, encrypted, or another engine's zstd.
var ErrNoIndex = errors.New("archive has no frame index")

// ReadIndex reads the index at the end of an archive of size bytes. It
// checks that the index describes the whole file; whether to believe it is
// the caller's to decide, by its Digest.
func ReadIndex(r io.ReaderAt, size int64) (*Index, error) {
	if size < skipHeader+seekFooter {
		return nil, ErrNoIndex
	}
	var foot [seekFooter]byte
	if _, err := r.ReadAt(foot[:], size-seekFooter); err != nil {
		return nil, fmt.Errorf("read frame index: %w", err)
	}
	if binary.LittleEndian.Uint32(foot[5:]) != seekableMagic {
		return nil, ErrNoIndex
	}
	n := int64(binary.LittleEndian.Uint32(foot[:4]))
	if foot[4] != 0 {
		return nil, fmt.Errorf("%w: frame index descriptor %#x", ErrInvalid, foot[4])
	}
	indexSize := 2*skipHeader + n*(32+8) + seekFooter
	if indexSize > size {
		return nil, fmt.Errorf("%w: frame index of %d frames in %d bytes", ErrInvalid, n, size)
	}
	b := make([]byte, indexSize)
	if _, err := r.ReadAt(b, size-indexSize); err != nil {
		return nil, fmt.Errorf("read frame index: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint32(b) != digestsMagic || int64(le.Uint32(b[4:])) != 32*n ||
		le.Uint32(b[skipHeader+32*n:]) != seekTableMagic || int64(le.Uint32(b[skipHeader+32*n+4:])) != 8*n+seekFooter {
		return nil, fmt.Errorf("%w: frame index is malformed", ErrInvalid)
	}
	sum := sha256.Sum256(b)
	ix := &Index{Frames: make([]Frame, n), offsets: make([]int64, n+1), starts: make([]int64, n+1), Digest: digestOfSum(sum)}
	table := b[2*skipHeader+32*n:]
	for i := range ix.Frames {
		f := &ix.Frames[i]
		copy(f.Digest[:], b[skipHeader+32*i:])
		f.Compressed, f.Size = le.Uint32(table[8*i:]), le.Uint32(table[8*i+4:])
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

func digestOfSum(sum [32]byte) string {
	return fmt.Sprintf("sha256:%x", sum)
}
