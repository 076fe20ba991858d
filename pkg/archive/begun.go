package archive

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Begun is a zstd archive begun before all its members exist: a stopping
// dump streams the tasks' pages into it as CRIU writes them (Stream), so
// that they reach the disk once, while the dump still runs; Finish adds
// the members that exist only afterwards and renames it into place.
//
// A streamed member's size is known at its end, and its tar header comes
// before its data. The header goes in a zstd frame of its own holding it
// raw (one raw block: the header's bytes lie in the file as they are), and
// is rewritten in place once the data has ended. The sha256 of the whole,
// which the rewrite changes, is taken by reading the file again at Finish,
// from the page cache, while the disk syncs.
type Begun struct {
	f   *os.File
	n   int64 // bytes written to f
	wr  time.Duration
	fw  *frameWriter
	buf []byte
	// turn is held by the member streaming in: a tar member's frames must
	// follow each other.
	turn chan struct{}
	// written are the members streamed in; err, once set, fails Finish
	// (a member is half in). Both are the turn holder's.
	written map[string]bool
	err     error
	done    bool
}

// streamBuffer is what Stream reads at once: a FIFO's worth, where
// io.Copy's 32 KiB would wake the reader 32 times as often.
const streamBuffer = 1 << 20

// Begin starts an archive under a hidden temporary name in dir, which
// must be on the filesystem of its destination (Finish renames it).
func Begin(dir string) (*Begun, error) {
	f, err := os.CreateTemp(dir, ".stasis-archive.partial-")
	if err != nil {
		return nil, fmt.Errorf("begin archive: %w", err)
	}
	b := &Begun{f: f, turn: make(chan struct{}, 1), written: map[string]bool{}, buf: make([]byte, streamBuffer)}
	if b.fw, err = newFrameWriter(&timedWriter{w: f, d: &b.wr, n: &b.n}); err != nil {
		b.Abort()
		return nil, err
	}
	return b, nil
}

// Stream writes r, to its end, as regular file member name, and reports
// true. It reports false, having read nothing, when another member is
// still streaming in after wait: the caller keeps r's bytes elsewhere
// (Capture). An error leaves the archive unfinishable.
func (b *Begun) Stream(name string, r io.Reader, wait time.Duration) (bool, error) {
	select {
	case b.turn <- struct{}{}:
	case <-time.After(wait):
		return false, nil
	}
	defer func() { <-b.turn }()
	if b.err != nil {
		return true, b.err
	}
	if err := b.stream(name, r); err != nil {
		b.err = fmt.Errorf("stream %s into the archive: %w", name, err)
		return true, b.err
	}
	b.written[name] = true
	return true, nil
}

func (b *Begun) stream(name string, r io.Reader) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, ModTime: time.Now(), Format: tar.FormatGNU}
	frame, err := headerFrame(hdr)
	if err != nil {
		return err
	}
	i, err := b.fw.WriteRawFrame(frame, blockSize)
	if err != nil {
		return err
	}
	at := b.n - int64(len(frame)) // WriteRawFrame wrote it after every frame before

	// Hidden from io.CopyBuffer, a file's WriteTo would copy 32 KiB at a
	// time again.
	n, err := io.CopyBuffer(b.fw, struct{ io.Reader }{r}, b.buf)
	if err != nil {
		return err
	}
	if _, err := b.fw.Write(make([]byte, (blockSize-n%blockSize)%blockSize)); err != nil {
		return err
	}
	// Every frame is out, and none is queued: frame i may be rewritten.
	if err := b.fw.Flush(); err != nil {
		return err
	}
	hdr.Size = n
	if frame, err = headerFrame(hdr); err != nil {
		return err
	}
	if _, err := b.f.WriteAt(frame, at); err != nil {
		return err
	}
	b.fw.SetFrame(i, frame)
	return nil
}

// blockSize is tar's, and a header's size.
const blockSize = 512

// headerFrame is hdr as tar writes it, in a zstd frame of one raw block
// (RFC 8878 3.1.1): single segment, the content size in two bytes, no
// checksum. Whatever hdr's size, GNU format keeps it within one block, so
// the frame is the same length before and after its rewrite.
func headerFrame(hdr *tar.Header) ([]byte, error) {
	var block blockBuffer
	if err := tar.NewWriter(&block).WriteHeader(hdr); err != nil {
		return nil, err
	}
	if len(block) != blockSize {
		return nil, fmt.Errorf("tar header of %s takes %d bytes", hdr.Name, len(block))
	}
	const fcs = blockSize - 256    // a two-byte content size is stored less 256
	bh := uint32(1 | blockSize<<3) // last block, raw, its size
	f := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x60, fcs & 0xff, fcs >> 8, byte(bh), byte(bh >> 8), byte(bh >> 16)}
	return append(f, block...), nil
}

type blockBuffer []byte

func (b *blockBuffer) Write(p []byte) (int, error) {
	*b = append(*b, p...)
	return len(p), nil
}

// Finish writes src's members but those streamed in, ends the archive
// with its index, syncs it and renames it to dest. Whatever happens, the
// temporary file is gone when Finish returns.
func (b *Begun) Finish(dest string, src Contents) (*WriteStats, error) {
	defer b.Abort()
	select {
	case b.turn <- struct{}{}: // every stream is done
	default:
		return nil, errors.New("archive: finished while a member streams in")
	}
	if b.err != nil {
		return nil, b.err
	}
	st := &WriteStats{}
	start := time.Now()
	var compressed int64
	a := &tarWriter{
		compressed: &timedWriter{w: b.fw, d: &st.Compress, n: &compressed},
		captured:   map[string]*Captured{},
		written:    b.written,
		frames:     b.fw,
	}
	a.tw = tar.NewWriter(a.compressed)
	if err := a.addMembers(src); err != nil {
		return nil, err
	}
	closeStart := time.Now()
	b.fw.index = true
	if err := b.fw.Close(); err != nil {
		return nil, err
	}
	st.IndexDigest = b.fw.indexDigest
	st.Compress += time.Since(closeStart)
	st.Archive = time.Since(start) - st.Compress
	syncStart := time.Now()
	digest, err := b.digestWhileSyncing()
	if err != nil {
		return nil, err
	}
	if err := b.place(dest); err != nil {
		return nil, err
	}
	st.Write = b.wr + time.Since(syncStart)
	st.Bytes, st.Digest = b.n, digest
	return st, nil
}

// digestWhileSyncing hashes the file while the disk syncs it: the one
// waits on the CPU, the other on the disk.
func (b *Begun) digestWhileSyncing() (string, error) {
	synced := make(chan error, 1)
	go func() { synced <- b.f.Sync() }()
	h := sha256.New()
	_, err := io.Copy(h, io.NewSectionReader(b.f, 0, b.n))
	if serr := <-synced; err == nil && serr != nil {
		err = fmt.Errorf("sync archive: %w", serr)
	}
	if err != nil {
		return "", err
	}
	return digestOf(h), nil
}

// place renames the finished file to dest, or copies it there when dest
// is on another filesystem.
func (b *Begun) place(dest string) error {
	if err := os.Chmod(b.f.Name(), 0o600); err != nil {
		return err
	}
	err := os.Rename(b.f.Name(), dest)
	if errors.Is(err, syscall.EXDEV) {
		// The copy is in place; Abort removes the original.
		return copyFile(b.f, dest)
	}
	if err != nil {
		return err
	}
	b.done = true
	if d, err := os.Open(filepath.Dir(dest)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// copyFile copies f to dest by way of a synced temporary file beside it.
func copyFile(f *os.File, dest string) error {
	tmp, err := os.CreateTemp(filepath.Dir(dest), "."+filepath.Base(dest)+".partial-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, io.NewSectionReader(f, 0, 1<<62)); err != nil {
		return err
	}
	if err := errors.Join(tmp.Sync(), tmp.Chmod(0o600)); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dest)
}

// Abort gives up the archive: its temporary file is removed. After Finish
// it does nothing.
func (b *Begun) Abort() {
	if b.f == nil {
		return
	}
	if b.fw != nil && b.fw.open {
		b.fw.Close()
	}
	b.f.Close()
	if !b.done {
		os.Remove(b.f.Name())
	}
	b.f = nil
}
