package pages

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"google.golang.org/protobuf/proto"
)

func writePagemap(t *testing.T, p string, entries ...*pagemap.PagemapEntry) {
	t.Helper()
	img := &crit.CriuImage{Magic: "PAGEMAP", Entries: []*crit.CriuEntry{{Message: &pagemap.PagemapHead{PagesId: proto.Uint32(1)}}}}
	for _, e := range entries {
		img.Entries = append(img.Entries, &crit.CriuEntry{Message: e})
	}
	if err := encodePagemap(p, img); err != nil {
		t.Fatal(err)
	}
}

func entry(vaddr uint64, pages uint32, flags uint32) *pagemap.PagemapEntry {
	return &pagemap.PagemapEntry{Vaddr: proto.Uint64(vaddr), CompatNrPages: proto.Uint32(pages), Flags: proto.Uint32(flags)}
}

func readMap(t *testing.T, p string) *Map {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := ReadMap(f)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Small runs of lazy memory become eager, large ones stay lazy, within the
// budget; what was not lazy is left as it was.
func TestMakeEager(t *testing.T) {
	dir := t.TempDir()
	lazy := uint32(flagLazy | flagPresent)
	p := filepath.Join(dir, "pagemap-1.img")
	writePagemap(t, p,
		entry(0x100000, 2, flagPresent), // a stack: never lazy
		entry(0x200000, 3, lazy),        // small, in two entries:
		entry(0x203000, 1, lazy),        // one run of 4 pages
		entry(0x400000, 4096, lazy),     // 16 MiB: a heap
		entry(0x2000000, 8, lazy),       // small
	)
	src, err := OpenSource(dir, map[string]Image{"pages-1.img": newImage(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.MakeEager(dir, Eager{MaxRun: 4 << 20, Budget: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if got := src.Maps[1]; !reflect.DeepEqual(got.Runs, readMap(t, p).Runs) {
		t.Errorf("in memory %+v, in the pagemap %+v", got.Runs, readMap(t, p).Runs)
	}
	m := readMap(t, p)
	want := []bool{false, false, true, false} // runs: stack, small, heap, small
	if len(m.Runs) != len(want) {
		t.Fatalf("runs %+v", m.Runs)
	}
	for i, r := range m.Runs {
		if r.Lazy != want[i] {
			t.Errorf("run %d at %#x: lazy %v, want %v", i, r.Vaddr, r.Lazy, want[i])
		}
	}
	if m.Runs[1].Length != 4*PageSize || m.Runs[1].Offset != 2*PageSize {
		t.Errorf("the small run moved in the pages image: %+v", m.Runs[1])
	}

	// A budget of one small run: the smallest goes first.
	dir = t.TempDir()
	writePagemap(t, filepath.Join(dir, "pagemap-2.img"), entry(0x200000, 4, lazy), entry(0x300000, 2, lazy))
	src, err = OpenSource(dir, map[string]Image{"pages-1.img": newImage(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.MakeEager(dir, Eager{MaxRun: 4 << 20, Budget: 2 * PageSize}); err != nil {
		t.Fatal(err)
	}
	m = readMap(t, filepath.Join(dir, "pagemap-2.img"))
	if len(m.Runs) != 2 || !m.Runs[0].Lazy || m.Runs[1].Lazy {
		t.Errorf("with a budget of 2 pages: %+v", m.Runs)
	}
}
