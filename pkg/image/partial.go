package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// PartialChunk is the unit a Partial fetches and keeps track of.
const PartialChunk = 1 << 20

// fillRun is how many chunks Fill asks for at once: few requests, and a
// reader's chunk is never queued behind a long one.
const fillRun = 8

// fetchPatience is how long a chunk is asked for again before its reader
// is told it failed: a registry or a node's agent restarting, a link down
// for a few seconds, a connection reset, is not a reason to kill a
// process waiting for its memory; it waits, as on a slow disk.
const fetchPatience = 30 * time.Second

// Remote is where a Partial's bytes come from: n bytes at off, as a
// stream (registry.Blob), copied to the file as they come, never held.
type Remote interface {
	ReadRange(ctx context.Context, off, n int64) (io.ReadCloser, error)
}

// Partial is a blob arriving out of order: a file of the blob's size,
// filled chunk by chunk from a remote reader as its bytes are read, and by
// Fill in order behind the reads. Once full it is the blob, when Verify
// says so. It checks no bytes as they arrive: its readers check what they
// read (an archive's frames against their index), and Verify the whole.
type Partial struct {
	f      *os.File
	size   int64
	remote Remote
	// ctx ends every fetch, those under way included.
	ctx context.Context
	// patience is fetchPatience but in tests.
	patience time.Duration
	mu       sync.Mutex
	cond     *sync.Cond
	// state is each chunk's: missing, fetching or present.
	state []chunkState
}

type chunkState uint8

const (
	missing chunkState = iota
	fetching
	present
)

// NewPartial fills f, truncated to size, from remote until ctx is done;
// have lists the runs of chunks f already holds (Have of the Partial that
// wrote them).
func NewPartial(ctx context.Context, f *os.File, size int64, remote Remote, have [][2]int) (*Partial, error) {
	if size < 0 {
		return nil, fmt.Errorf("partial blob of %d bytes", size)
	}
	if err := f.Truncate(size); err != nil {
		return nil, err
	}
	p := &Partial{f: f, size: size, remote: remote, ctx: ctx, patience: fetchPatience,
		state: make([]chunkState, (size+PartialChunk-1)/PartialChunk)}
	p.cond = sync.NewCond(&p.mu)
	for _, r := range have {
		if r[0] < 0 || r[1] > len(p.state) || r[0] > r[1] {
			return nil, fmt.Errorf("partial blob: chunks %d-%d of %d", r[0], r[1], len(p.state))
		}
		for i := r[0]; i < r[1]; i++ {
			p.state[i] = present
		}
	}
	return p, nil
}

// Size is the blob's size.
func (p *Partial) Size() int64 { return p.size }

// ReadAt reads from f once the chunks under p[off:] are there, fetching
// those that are not.
func (p *Partial) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 || off >= p.size {
		if off == p.size {
			return 0, io.EOF
		}
		return 0, fmt.Errorf("partial blob: read at %d of %d bytes", off, p.size)
	}
	end := min(off+int64(len(b)), p.size)
	if err := p.ensure(int(off/PartialChunk), int((end-1)/PartialChunk)+1); err != nil {
		return 0, err
	}
	n, err := p.f.ReadAt(b[:end-off], off)
	if err == nil && n < len(b) {
		err = io.EOF
	}
	return n, err
}

// ensure returns once chunks [first, last) are present, fetching the
// missing ones nobody is fetching, in runs, and waiting for the others.
func (p *Partial) ensure(first, last int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		i := first
		for i < last && p.state[i] == present {
			i++
		}
		if i == last {
			return nil
		}
		if p.state[i] == fetching {
			p.cond.Wait()
			continue
		}
		j := i
		for j < last && p.state[j] == missing {
			p.state[j] = fetching
			j++
		}
		p.mu.Unlock()
		err := p.fetch(i, j)
		p.mu.Lock()
		next := present
		if err != nil {
			next = missing
		}
		for k := i; k < j; k++ {
			p.state[k] = next
		}
		p.cond.Broadcast()
		if err != nil {
			return err
		}
	}
}

// fetch copies chunks [i, j) from remote into f.
func (p *Partial) fetch(i, j int) error {
	off := int64(i) * PartialChunk
	n := min(int64(j)*PartialChunk, p.size) - off
	deadline := time.Now().Add(p.patience)
	for try := 1; ; try++ {
		err := p.copyRange(off, n)
		if err == nil {
			return nil
		}
		wait := min(time.Duration(try*try)*200*time.Millisecond, 5*time.Second)
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("fetch bytes %d-%d (%d tries): %w", off, off+n-1, try, err)
		}
		select {
		case <-time.After(wait):
		case <-p.ctx.Done():
			return p.ctx.Err()
		}
	}
}

// copyRange copies n bytes at off from remote into f.
func (p *Partial) copyRange(off, n int64) error {
	rc, err := p.remote.ReadRange(p.ctx, off, n)
	if err != nil {
		return err
	}
	defer rc.Close()
	w, err := io.Copy(io.NewOffsetWriter(p.f, off), io.LimitReader(rc, n))
	if err == nil && w != n {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// Fill fetches every chunk not yet present, in order, a few at a time,
// and returns once the blob is all there.
func (p *Partial) Fill(ctx context.Context) error {
	for i := 0; i < len(p.state); i += fillRun {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := p.ensure(i, min(i+fillRun, len(p.state))); err != nil {
			return err
		}
	}
	return nil
}

// Have lists the runs of chunks present, for NewPartial in another
// process to go on from.
func (p *Partial) Have() [][2]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var runs [][2]int
	for i := 0; i < len(p.state); i++ {
		if p.state[i] != present {
			continue
		}
		j := i
		for j < len(p.state) && p.state[j] == present {
			j++
		}
		runs = append(runs, [2]int{i, j})
		i = j
	}
	return runs
}

// Verify checks that the blob, all there, is h.
func (p *Partial) Verify(h v1.Hash) error {
	p.mu.Lock()
	for _, s := range p.state {
		if s != present {
			p.mu.Unlock()
			return errors.New("partial blob: not all there")
		}
	}
	p.mu.Unlock()
	sum := sha256.New()
	if _, err := io.Copy(sum, io.NewSectionReader(p.f, 0, p.size)); err != nil {
		return err
	}
	if got := hex.EncodeToString(sum.Sum(nil)); h.Algorithm != "sha256" || got != h.Hex {
		return fmt.Errorf("blob %s: content does not match its digest (got sha256:%s): corrupt or tampered", h, got)
	}
	return p.f.Sync()
}
