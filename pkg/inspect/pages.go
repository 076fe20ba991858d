package inspect

import (
	"fmt"
	"io"
	"math"
	"os"
	"regexp"

	"github.com/checkpoint-restore/go-criu/v8/crit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"

	"github.com/stasis-dev/stasis/pkg/archive"
)

// pagePresent is CRIU's PE_PRESENT: the entry's pages are in the pages
// image (rather than in a parent image, or not dumped).
const pagePresent = 1 << 2

var pageSize = uint64(os.Getpagesize())

// pageIndex maps a process's dumped memory to its pages image. go-criu
// decodes the pagemap; the reading is done here because go-criu's own
// reader only knows the page count field newer CRIUs write (nr_pages,
// field 5), not the one CRIU 4.1 and older write (field 2).
type pageIndex struct {
	// dir holds file, the pages image, as a member name.
	dir  archive.Dir
	file string
	runs []pageRun
}

type pageRun struct {
	vaddr, length, offset uint64 // bytes
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
	img, err := decode("pagemap", func() (*crit.CriuImage, error) {
		return crit.New(f, nil, "", false, false).Decode(&pagemap.PagemapHead{})
	})
	if err != nil {
		return nil, fmt.Errorf("memory of pid %d: pagemap: %w", pid, err)
	}
	if img.Magic != "PAGEMAP" { // crit decodes by the magic, whatever was asked
		return nil, fmt.Errorf("memory of pid %d: pagemap-%d.img is a %s image", pid, pid, img.Magic)
	}
	if len(img.Entries) == 0 {
		return nil, fmt.Errorf("memory of pid %d: empty pagemap", pid)
	}
	head := img.Entries[0].Message.(*pagemap.PagemapHead)
	ix := &pageIndex{dir: c.dir, file: fmt.Sprintf("%s/pages-%d.img", archive.CheckpointDir, head.GetPagesId())}
	var off uint64
	for _, e := range img.Entries[1:] {
		p := e.Message.(*pagemap.PagemapEntry)
		n := p.GetNrPages()
		if n == 0 {
			n = uint64(p.GetCompatNrPages())
		}
		if p.GetInParent() || (p.Flags != nil && p.GetFlags()&pagePresent == 0) {
			continue
		}
		r := pageRun{vaddr: p.GetVaddr(), length: n * pageSize, offset: off}
		// Runs that wrap around would map one stretch of the pages
		// image many times over (and ReadAt takes an int64).
		if n > math.MaxInt64/pageSize || r.vaddr+r.length < r.vaddr || off+r.length < off || off+r.length > math.MaxInt64 {
			return nil, fmt.Errorf("memory of pid %d: pagemap entry %x+%d pages is out of range", pid, r.vaddr, n)
		}
		off += r.length
		if k := len(ix.runs) - 1; k >= 0 && ix.runs[k].vaddr+ix.runs[k].length == r.vaddr && ix.runs[k].offset+ix.runs[k].length == r.offset {
			ix.runs[k].length += r.length
			continue
		}
		ix.runs = append(ix.runs, r)
	}
	return ix, nil
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
		lo, hi := max(start, r.vaddr), min(end, r.vaddr+r.length)
		if lo >= hi {
			continue
		}
		if _, err := f.ReadAt(out[lo-start:hi-start], int64(r.offset+lo-r.vaddr)); err != nil && err != io.EOF {
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
		for pos := uint64(0); pos < r.length; pos += searchChunk {
			n := min(uint64(len(buf)), r.length-pos)
			k, err := f.ReadAt(buf[:n], int64(r.offset+pos))
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
				fn(r.vaddr+pos+uint64(m[0]), m[1]-m[0], b[lo:hi])
			}
			if uint64(k) < n {
				break // the end of the pages image
			}
		}
	}
	return nil
}
