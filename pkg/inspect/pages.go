package inspect

import (
	"fmt"
	"io"
	"regexp"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/pages"
)

// pageIndex maps a process's dumped memory to its pages image.
type pageIndex struct {
	// dir holds file, the pages image, as a member name.
	dir  archive.Dir
	file string
	runs []pages.Run
}

func (c *Checkpoint) pageIndex(pid uint32) (*pageIndex, error) {
	if err := c.check("pagemap-*.img"); err != nil {
		return nil, err
	}
	f, err := c.dir.OpenMember(fmt.Sprintf("%s/pagemap-%d.img", archive.CheckpointDir, pid))
	if err != nil {
		return nil, fmt.Errorf("memory of pid %d: %w", pid, err)
	}
	defer f.Close()
	m, err := pages.ReadMap(f)
	if err != nil {
		return nil, fmt.Errorf("memory of pid %d: %w", pid, corrupt("pagemap", err))
	}
	return &pageIndex{dir: c.dir, file: archive.CheckpointDir + "/" + m.PagesImage(), runs: m.Runs}, nil
}

// read returns memory [start, end); bytes not dumped read as zero.
func (ix *pageIndex) read(start, end uint64) ([]byte, error) {
	if end < start || end-start > 64<<20 {
		return nil, fmt.Errorf("bad memory range %x-%x", start, end)
	}
	out := make([]byte, end-start)
	f, err := ix.dir.OpenMember(ix.file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	for _, r := range ix.runs {
		lo, hi := max(start, r.Vaddr), min(end, r.Vaddr+r.Length)
		if lo >= hi {
			continue
		}
		if _, err := f.ReadAt(out[lo-start:hi-start], int64(r.Offset+lo-r.Vaddr)); err != nil && err != io.EOF {
			return nil, err
		}
	}
	return out, nil
}

// searchOverlap is how far chunks overlap: a match up to this long is found
// even when it straddles two chunks.
const searchOverlap = 64 << 10

// search streams through the dumped memory a chunk at a time and calls fn
// for each match of re with its address and the bytes around it.
func (ix *pageIndex) search(re *regexp.Regexp, context int, fn func(vaddr uint64, n int, around []byte)) error {
	f, err := ix.dir.OpenMember(ix.file)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, searchChunk+searchOverlap)
	for _, r := range ix.runs {
		// Each chunk owns the matches that start in its first
		// searchChunk bytes; the overlap lets those finish.
		for pos := uint64(0); pos < r.Length; pos += searchChunk {
			n := min(uint64(len(buf)), r.Length-pos)
			k, err := f.ReadAt(buf[:n], int64(r.Offset+pos))
			if err != nil && err != io.EOF {
				return err
			}
			// Only what was read: the pages image may end before the
			// pagemap says (truncated, or hostile).
			b := buf[:k]
			for _, m := range re.FindAllIndex(b, -1) {
				if uint64(m[0]) >= searchChunk {
					break
				}
				lo, hi := max(m[0]-context, 0), min(m[1]+context, len(b))
				fn(r.Vaddr+pos+uint64(m[0]), m[1]-m[0], b[lo:hi])
			}
			if uint64(k) < n {
				break // the end of the pages image
			}
		}
	}
	return nil
}
