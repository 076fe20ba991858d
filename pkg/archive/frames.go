package archive

import (
	"crypto/sha256"
	"fmt"
	"io"
	"runtime"

	"github.com/klauspost/compress/zstd"
)

// frameSize is how much input goes into one zstd frame. Frames are
// compressed independently, so this is the unit of parallelism, and read
// independently: a lazy restore's first touch of a page waits for its
// frame to be read, checked and decompressed. 1 MiB against 4 MiB: a JVM's
// first tick 0.6 -> 0.5 s, a 1 GiB checkpoint faster (the disk starts
// sooner) in a third less memory, and its easy heap's archive 2.8 -> 3.1
// MiB (hack/bench-jvm.sh).
const frameSize = 1 << 20

// frameWriter compresses what is written to it as a sequence of independent
// zstd frames, on all CPUs, and writes them to out in order.
//
// A stream of concatenated frames is one valid zstd stream (RFC 8878, 3.1),
// so every zstd reader reads it as usual. klauspost's streaming encoder only
// overlaps one block with the caller; independent frames are what let a
// checkpoint compress on every core, and let bytes compressed earlier (a
// Capture) be spliced into the stream between two frames.
type frameWriter struct {
	enc  *zstd.Encoder
	out  io.Writer
	buf  []byte
	free chan []byte // reused buffers: fresh ones cost page faults

	// queue holds one result channel per submitted frame, in submission
	// order; the drain goroutine writes results in that order.
	queue chan chan frameOut
	// frames records every frame written, in order, for the index.
	frames  []Frame
	open    bool
	sem     chan struct{}
	drained chan error
	err     error
	// index ends the stream with the frames' index (index.go), whose
	// digest Close records in indexDigest.
	index       bool
	indexDigest string
}

func newFrameWriter(out io.Writer) (*frameWriter, error) {
	n := runtime.GOMAXPROCS(0)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(n))
	if err != nil {
		return nil, err
	}
	fw := &frameWriter{enc: enc, out: out, sem: make(chan struct{}, n), free: make(chan []byte, 2*n)}
	fw.start()
	return fw, nil
}

func (fw *frameWriter) get() []byte {
	select {
	case b := <-fw.free:
		return b[:0]
	default:
		return make([]byte, 0, frameSize)
	}
}

func (fw *frameWriter) put(b []byte) {
	select {
	case fw.free <- b:
	default:
	}
}

// frameOut is one compressed frame and what the index records of it.
type frameOut struct {
	data []byte
	f    Frame
}

func (fw *frameWriter) start() {
	fw.queue = make(chan chan frameOut, cap(fw.sem))
	fw.drained = make(chan error, 1)
	fw.open = true
	go func(queue chan chan frameOut, done chan error) {
		var err error
		for res := range queue {
			out := <-res
			if err == nil {
				_, err = fw.out.Write(out.data)
				fw.frames = append(fw.frames, out.f)
			}
			fw.put(out.data)
		}
		done <- err
	}(fw.queue, fw.drained)
}

func (fw *frameWriter) Write(p []byte) (int, error) {
	if fw.err != nil {
		return 0, fw.err
	}
	n := len(p)
	for len(p) > 0 {
		if fw.buf == nil {
			fw.buf = fw.get()
		}
		k := min(frameSize-len(fw.buf), len(p))
		fw.buf = append(fw.buf, p[:k]...)
		p = p[k:]
		if len(fw.buf) == frameSize {
			fw.submit()
		}
	}
	return n, nil
}

// submit hands the buffered input to a compressing goroutine; at most
// GOMAXPROCS compress at once and at most twice that wait to be written,
// which bounds memory and pushes back on the producer.
func (fw *frameWriter) submit() {
	if len(fw.buf) == 0 {
		return
	}
	in := fw.buf
	fw.buf = nil
	res := make(chan frameOut, 1)
	fw.queue <- res
	fw.sem <- struct{}{}
	go func() {
		out := fw.enc.EncodeAll(in, fw.get())
		f := Frame{Compressed: uint32(len(out)), Size: uint32(len(in)), Digest: sha256.Sum256(out)}
		fw.put(in)
		<-fw.sem
		res <- frameOut{data: out, f: f}
	}()
}

// Flush ends the current frame and waits until every frame is written to
// out, so that the caller may write to out directly next.
func (fw *frameWriter) Flush() error {
	if err := fw.wait(); err != nil {
		return err
	}
	fw.start()
	return nil
}

func (fw *frameWriter) wait() error {
	if !fw.open {
		return fw.err
	}
	fw.submit()
	close(fw.queue)
	fw.open = false
	if err := <-fw.drained; err != nil && fw.err == nil {
		fw.err = err
	}
	return fw.err
}

// WriteRaw writes bytes that already are whole zstd frames, between the
// frames of this stream; frames is what the index records of them.
func (fw *frameWriter) WriteRaw(r io.Reader, frames []Frame) (int64, error) {
	if err := fw.Flush(); err != nil {
		return 0, err
	}
	n, err := io.Copy(fw.out, r)
	var want int64
	for _, f := range frames {
		want += int64(f.Compressed)
	}
	if err == nil && n != want {
		err = fmt.Errorf("captured frames: %d bytes, their index says %d", n, want)
	}
	if err != nil {
		fw.err = err
		return n, err
	}
	fw.frames = append(fw.frames, frames...)
	return n, nil
}

// WriteRawFrame writes b, one whole zstd frame of size bytes
// uncompressed, between the frames of this stream, and returns its place
// in the index, for SetFrame once b is rewritten in place.
func (fw *frameWriter) WriteRawFrame(b []byte, size uint32) (int, error) {
	if err := fw.Flush(); err != nil {
		return 0, err
	}
	if _, err := fw.out.Write(b); err != nil {
		fw.err = err
		return 0, err
	}
	fw.frames = append(fw.frames, Frame{Compressed: uint32(len(b)), Size: size, Digest: sha256.Sum256(b)})
	return len(fw.frames) - 1, nil
}

// SetFrame records that frame i, written by WriteRawFrame, now reads b
// (of the same length). Only between a Flush and the next Write.
func (fw *frameWriter) SetFrame(i int, b []byte) {
	fw.frames[i].Digest = sha256.Sum256(b)
}

func (fw *frameWriter) Close() error {
	err := fw.wait()
	if err == nil && fw.index {
		b := encodeIndex(fw.frames)
		_, err = fw.out.Write(b)
		fw.err = err
		fw.indexDigest = digestOfSum(sha256.Sum256(b))
	}
	if fw.err == nil {
		fw.err = io.ErrClosedPipe
	}
	fw.enc.Close()
	return err
}
