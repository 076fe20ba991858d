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
func ReadMap(f *os.File) (m *Map, err error) {
	defer func() {
		if p := recover(); p != nil {
			m, err = nil, fmt.Errorf("pagemap: go-criu failed on it: %v", p)
		}
	}()
	img, err := crit.New(f, nil, "", false, false).Decode(&pagemap.PagemapHead{})
	if err != nil {
		return nil, fmt.Errorf("pagemap: %w", err)
	}
	if img.Magic != "PAGEMAP" { // crit decodes by the magic, whatever was asked
		return nil, fmt.Errorf("pagemap: a %s image", img.Magic)
	}
	if len(img.Entries) == 0 {
		return nil, fmt.Errorf("pagemap: empty")
	}
	head, ok := img.Entries[0].Message.(*pagemap.PagemapHead)
	if !ok {
		return nil, fmt.Errorf("pagemap: no head")
	}
	m = &Map{PagesID: head.GetPagesId()}
	var off, last uint64
	for _, e := range img.Entries[1:] {
		p, ok := e.Message.(*pagemap.PagemapEntry)
		if !ok {
			return nil, fmt.Errorf("pagemap: not a pagemap entry")
		}
		n := p.GetNrPages()
		if n == 0 {
			n = uint64(p.GetCompatNrPages())
		}
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
