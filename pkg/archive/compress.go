package archive

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"runtime"

	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
)

// Compression of the archive stream.
type Compression string

const (
	Zstd Compression = "zstd"
	Gzip Compression = "gzip"
	None Compression = "none"
)

// ParseCompression accepts the names the CLI offers.
func ParseCompression(s string) (Compression, error) {
	switch Compression(s) {
	case Zstd, Gzip, None:
		return Compression(s), nil
	case "":
		return Zstd, nil
	}
	return "", fmt.Errorf("unknown compression %q (want zstd, gzip or none)", s)
}

// CompressionFor picks the compression a file name implies, falling back to def.
func CompressionFor(name string, def Compression) Compression {
	switch {
	case hasSuffix(name, ".zst", ".zstd"):
		return Zstd
	case hasSuffix(name, ".gz", ".tgz"):
		return Gzip
	case hasSuffix(name, ".tar"):
		return None
	}
	return def
}

func hasSuffix(s string, suffixes ...string) bool {
	for _, x := range suffixes {
		if len(s) >= len(x) && s[len(s)-len(x):] == x {
			return true
		}
	}
	return false
}

func compressor(w io.Writer, c Compression) (io.WriteCloser, error) {
	switch c {
	case Zstd:
		// The fastest level: checkpoints are mostly memory pages, where
		// higher levels cost far more time than they save in size.
		return newFrameWriter(w)
	case Gzip:
		gw, err := pgzip.NewWriterLevel(w, pgzip.BestSpeed)
		if err != nil {
			return nil, err
		}
		return gw, nil
	case None:
		return nopCloser{w}, nil
	}
	return nil, fmt.Errorf("unknown compression %q", c)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

var (
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
	gzipMagic = []byte{0x1f, 0x8b}
)

// MaxZstdWindow is the largest zstd window accepted: a decoder allocates
// the window a stream asks for, so a small hostile stream could otherwise
// claim gigabytes of memory. stasis writes 1 MiB frames; zstd's own CLI
// needs --long beyond 128 MiB.
const MaxZstdWindow = 128 << 20

// decompressor sniffs the stream's first bytes, so archives are read the
// same whatever their name says.
func decompressor(r io.Reader) (io.ReadCloser, Compression, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	head, err := br.Peek(4)
	if err != nil && err != io.EOF {
		return nil, "", err
	}
	switch {
	case bytes.HasPrefix(head, zstdMagic):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)),
			zstd.WithDecoderMaxWindow(MaxZstdWindow))
		if err != nil {
			return nil, "", err
		}
		return zr.IOReadCloser(), Zstd, nil
	case bytes.HasPrefix(head, gzipMagic):
		gr, err := pgzip.NewReader(br) // reads the header
		if err != nil {
			return nil, "", fmt.Errorf("%w: gzip: %w", ErrInvalid, err)
		}
		return gr, Gzip, nil
	}
	return io.NopCloser(br), None, nil
}

// Decompress reads a stream that may be zstd or gzip compressed, or not:
// the members engines write compressed (containerd gzips rootfs-diff.tar).
func Decompress(r io.Reader) (io.ReadCloser, error) {
	rc, _, err := decompressor(r)
	return rc, err
}
