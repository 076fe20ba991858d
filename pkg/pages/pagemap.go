// Package pages is a checkpoint's memory: where each dumped page of a
// process lies in its pages image (the pagemap), and a server that hands
// pages to CRIU's lazy-pages daemon from wherever the pages image lies (an
// archive read frame by frame, a registry blob, another node), so a lazy
// restore never unpacks memory to disk.
package pages

import (
	"fmt"
	"math"
	"os"

	"github.com/checkpoint-restore/go-criu/v8/crit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
)

// CRIU's pagemap entry flags (criu/include/pagemap.h).
const (
	flagLazy    = 1 << 1 // PE_LAZY: the restore may leave it to lazy-pages
	flagPresent = 1 << 2 // PE_PRESENT: the pages are in the pages image
)

// PageSize is the size of the pages CRIU dumps: this host's.
var PageSize = uint64(os.Getpagesize())

// Run is a stretch of memory dumped in one piece.
type Run struct {
	Vaddr, Length uint64 // bytes
	// Offset is where the run starts in the pages image.
	Offset uint64
	// Lazy runs are private anonymous memory, which a lazy restore leaves
	// for the lazy-pages daemon to fill on first touch.
	Lazy bool
}

// Map is one process's pagemap: its dumped memory, in address order.
type Map struct {
	// PagesID names the pages image the runs are in (PagesImage).
	PagesID uint32
	Runs    []Run
}

// PagesImage is the name of the pages image in CRIU's image directory.
func (m *Map) PagesImage() string { return fmt.Sprintf("pages-%d.img", m.PagesID) }

// End is the length of the pages image the map needs.
func (m *Map) End() uint64 {
	if len(m.Runs) == 0 {
		return 0
	}
	r := m.Runs[len(m.Runs)-1]
	return r.Offset + r.Length
}

// Find returns the run that holds vaddr.
func (m *Map) Find(vaddr uint64) (Run, bool) {
	lo, hi := 0, len(m.Runs)
	for lo < hi {
		mid := (lo + hi) / 2
		if r := m.Runs[mid]; vaddr >= r.Vaddr+r.Length {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < len(m.Runs) && m.Runs[lo].Vaddr <= vaddr {
		return m.Runs[lo], true
	}
	return Run{}, false
}

// ReadMap decodes a pagemap image (pagemap-<pid>.img). go-criu decodes it;
// the runs are computed here because go-criu's own page reader only knows
// the page count field newer CRIUs write (nr_pages, field 5), not the one
// CRIU 4.1 and older write (field 2). A hostile image gets an error, never
// a panic or runs that overlap or wrap.
func ReadMap(f *os.File) (*Map, error) {
	img, err := decodePagemap(f)
	if err != nil {
		return nil, err
	}
	m := &Map{PagesID: img.Entries[0].Message.(*pagemap.PagemapHead).GetPagesId()}
	var off, last uint64
	for _, p := range entries(img) {
		n := pagesOf(p)
		if p.GetInParent() || (p.Flags != nil && p.GetFlags()&flagPresent == 0) {
			continue
		}
		r := Run{Vaddr: p.GetVaddr(), Length: n * PageSize, Offset: off, Lazy: p.GetFlags()&flagLazy != 0}
		// Runs that wrap around or go backwards would map one stretch of
		// the pages image many times over (and ReadAt takes an int64).
		if n > math.MaxInt64/PageSize || r.Vaddr+r.Length < r.Vaddr || off+r.Length < off ||
			off+r.Length > math.MaxInt64 || r.Vaddr < last {
			return nil, fmt.Errorf("pagemap: entry %x+%d pages is out of range", r.Vaddr, n)
		}
		off += r.Length
		last = r.Vaddr + r.Length
		if k := len(m.Runs) - 1; k >= 0 && m.Runs[k].Vaddr+m.Runs[k].Length == r.Vaddr && m.Runs[k].Lazy == r.Lazy {
			m.Runs[k].Length += r.Length
			continue
		}
		m.Runs = append(m.Runs, r)
	}
	return m, nil
}

// decodePagemap decodes a pagemap image with go-criu, checking what go-criu
// does not: the magic (crit decodes by it, whatever was asked), a head
// first, entries after; and turning a panic of go-criu's into an error.
func decodePagemap(f *os.File) (img *crit.CriuImage, err error) {
	defer func() {
		if p := recover(); p != nil {
			img, err = nil, fmt.Errorf("pagemap: go-criu failed on it: %v", p)
		}
	}()
	img, err = crit.New(f, nil, "", false, false).Decode(&pagemap.PagemapHead{})
	if err != nil {
		return nil, fmt.Errorf("pagemap: %w", err)
	}
	if img.Magic != "PAGEMAP" {
		return nil, fmt.Errorf("pagemap: a %s image", img.Magic)
	}
	if len(img.Entries) == 0 {
		return nil, fmt.Errorf("pagemap: empty")
	}
	if _, ok := img.Entries[0].Message.(*pagemap.PagemapHead); !ok {
		return nil, fmt.Errorf("pagemap: no head")
	}
	for _, e := range img.Entries[1:] {
		if _, ok := e.Message.(*pagemap.PagemapEntry); !ok {
			return nil, fmt.Errorf("pagemap: not a pagemap entry")
		}
	}
	return img, nil
}

// entries are a decoded pagemap's entries, after its head.
func entries(img *crit.CriuImage) []*pagemap.PagemapEntry {
	out := make([]*pagemap.PagemapEntry, 0, len(img.Entries)-1)
	for _, e := range img.Entries[1:] {
		out = append(out, e.Message.(*pagemap.PagemapEntry))
	}
	return out
}

// pagesOf is an entry's page count, in whichever field its CRIU wrote it.
func pagesOf(p *pagemap.PagemapEntry) uint64 {
	if n := p.GetNrPages(); n != 0 {
		return n
	}
	return uint64(p.GetCompatNrPages())
}
