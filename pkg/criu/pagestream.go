package criu

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// PageStreams puts FIFOs where CRIU will write its first page images
// (pages-1.img, pages-2.img, ...; CRIU numbers them from 1 in the order it
// dumps), so a dump's memory flows from the frozen tasks straight to a
// consumer instead of through a file.
//
// Writing a file is what bounds a dump: CRIU's splice from its page pipes
// into the page cache runs at under 1 GB/s here, while a splice into a
// FIFO moves page references. The tasks stay frozen for as long as the
// consumer takes, so the consumer should be fast; and the last pages may
// still be in the FIFO after CRIU returns, referring to the tasks' memory.
// That is only safe when the tasks die with the dump: never use this with
// --leave-running.
//
// CRIU, driven through runc's RPC, cannot use its own --stream mode
// (cr-service.c opens the image directory without a streamer), which is why
// this uses FIFOs.
type PageStreams struct {
	streams []*pageStream
	wg      sync.WaitGroup
}

type pageStream struct {
	path string
	err  error
}

// StreamPages creates n FIFOs in imageDir and calls consume with each one's
// name and contents, from a goroutine of its own. A FIFO CRIU does not
// open yields no bytes, which stands for an empty page image: harmless,
// as CRIU only reads the page images its pagemaps name. Page images beyond
// n (more processes than expected, shared memory) are files as usual.
func StreamPages(imageDir string, n int, consume func(name string, r io.Reader) error) (*PageStreams, error) {
	ps := &PageStreams{}
	for id := 1; id <= n; id++ {
		s := &pageStream{path: filepath.Join(imageDir, fmt.Sprintf("pages-%d.img", id))}
		if err := unix.Mkfifo(s.path, 0o600); err != nil {
			ps.Close()
			return nil, fmt.Errorf("page stream: %w", err)
		}
		ps.streams = append(ps.streams, s)
		ps.wg.Add(1)
		go ps.serve(s, consume)
	}
	return ps, nil
}

func (ps *PageStreams) serve(s *pageStream, consume func(string, io.Reader) error) {
	defer ps.wg.Done()
	// Blocks until a writer opens the FIFO: CRIU, or Close releasing it.
	f, err := os.OpenFile(s.path, os.O_RDONLY, 0)
	if err != nil {
		s.err = err
		return
	}
	defer f.Close()
	// A larger FIFO means fewer wake-ups per MiB; the default is 64 KiB.
	unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	s.err = consume(filepath.Base(s.path), f)
	// CRIU blocks, with the tasks frozen, while nobody reads: a failed
	// consumer must still drain.
	io.Copy(io.Discard, f)
}

// Close is called once CRIU has exited, whether the dump worked or not. It
// releases the readers of FIFOs CRIU never opened, waits for all
// consumers and returns the first error.
func (ps *PageStreams) Close() error {
	for _, s := range ps.streams {
		// Opening the write end lets a reader still waiting in open go on
		// to read end-of-file; where CRIU had it open, this changes nothing.
		if w, err := os.OpenFile(s.path, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
	}
	ps.wg.Wait()
	var errs []error
	for _, s := range ps.streams {
		errs = append(errs, s.err)
	}
	return errors.Join(errs...)
}
