package pages

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/checkpoint-restore/go-criu/v8/crit"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// Eager bounds what a lazy restore brings in before the process runs: CRIU
// leaves all private anonymous memory to the lazy-pages daemon, which
// fetches it a page per fault, so a program that touches many small
// mappings first (a JVM's code cache, metaspace, malloc arenas) waits on a
// round trip per page. The small runs are what it touches first and cost
// little to copy at once; the large ones (a heap) are what is worth leaving.
type Eager struct {
	// MaxRun is the largest run of lazy memory restored at once.
	MaxRun uint64
	// Budget is how much lazy memory may be restored at once in all.
	Budget uint64
}

// DefaultEager restores runs under 4 MiB at once, 64 MiB of them at most.
var DefaultEager = Eager{MaxRun: 4 << 20, Budget: 64 << 20}

// MakeEager makes the smallest runs of lazy memory, as e allows, no
// longer lazy: in src, and in the pagemaps in CRIU's image directory dir
// that src was read from, so that `criu restore` reads them itself
// (WriteResident writes them) before the process runs. Only the pagemaps
// it changes are decoded again.
func (src *Source) MakeEager(dir string, e Eager) error {
	type lazyRun struct {
		pid uint32
		run *Run
	}
	var runs []lazyRun
	for pid, m := range src.Maps {
		for i := range m.Runs {
			if m.Runs[i].Lazy {
				runs = append(runs, lazyRun{pid, &m.Runs[i]})
			}
		}
	}
	sort.Slice(runs, func(i, j int) bool {
		if a, b := runs[i].run, runs[j].run; a.Length != b.Length {
			return a.Length < b.Length
		}
		return runs[i].pid < runs[j].pid || runs[i].pid == runs[j].pid && runs[i].run.Vaddr < runs[j].run.Vaddr
	})
	changed := map[uint32]bool{}
	var spent uint64
	for _, r := range runs {
		if r.run.Length > e.MaxRun || spent+r.run.Length > e.Budget {
			break
		}
		spent += r.run.Length
		r.run.Lazy = false
		changed[r.pid] = true
	}
	files, err := pagemaps(dir)
	if err != nil {
		return err
	}
	for pid := range changed {
		if err := rewriteLazy(dir, files[pid], src.Maps[pid]); err != nil {
			return fmt.Errorf("%s: %w", files[pid], err)
		}
	}
	return nil
}

// rewriteLazy sets each entry's PE_LAZY in the pagemap file name as m says
// of the run that holds it.
func rewriteLazy(dir, name string, m *Map) error {
	f, err := openImage(dir, name)
	if err != nil {
		return err
	}
	img, err := decodePagemap(f)
	f.Close()
	if err != nil {
		return err
	}
	for _, p := range entries(img) {
		if r, ok := m.Find(p.GetVaddr()); ok && p.GetFlags()&flagLazy != 0 && !r.Lazy {
			p.Flags = proto.Uint32(p.GetFlags() &^ flagLazy)
		}
	}
	return encodePagemap(filepath.Join(dir, name), img)
}

// encodePagemap replaces the image at p, by rename: CRIU never sees half.
func encodePagemap(p string, img *crit.CriuImage) error {
	tmp := p + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	err = crit.New(nil, f, "", false, false).Encode(img)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
