package pages

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
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

// MakeEager rewrites the pagemaps in CRIU's image directory dir so that the
// smallest runs of lazy memory, as e allows, are no longer lazy: `criu
// restore` then reads them itself (WriteResident writes them) before the
// process runs.
func MakeEager(dir string, e Eager) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	type run struct {
		file    string
		entries []*pagemap.PagemapEntry
		length  uint64
	}
	var runs []*run
	images := map[string]*crit.CriuImage{}
	for _, ent := range ents {
		name := ent.Name()
		if !strings.HasPrefix(name, "pagemap-") || strings.HasPrefix(name, "pagemap-shmem-") || !ent.Type().IsRegular() {
			continue
		}
		img, err := decodePagemap(filepath.Join(dir, name))
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		images[name] = img
		var cur *run
		var end uint64
		for _, en := range img.Entries[1:] {
			p, ok := en.Message.(*pagemap.PagemapEntry)
			if !ok {
				return fmt.Errorf("%s: not a pagemap entry", name)
			}
			n := p.GetNrPages()
			if n == 0 {
				n = uint64(p.GetCompatNrPages())
			}
			if p.GetFlags()&flagLazy == 0 || p.GetFlags()&flagPresent == 0 {
				cur = nil
				continue
			}
			if cur == nil || p.GetVaddr() != end {
				cur = &run{file: name}
				runs = append(runs, cur)
			}
			cur.entries = append(cur.entries, p)
			cur.length += n * PageSize
			end = p.GetVaddr() + n*PageSize
		}
	}
	sort.SliceStable(runs, func(i, j int) bool { return runs[i].length < runs[j].length })
	changed := map[string]bool{}
	var spent uint64
	for _, r := range runs {
		if r.length > e.MaxRun || spent+r.length > e.Budget {
			break
		}
		spent += r.length
		for _, p := range r.entries {
			p.Flags = proto.Uint32(p.GetFlags() &^ flagLazy)
		}
		changed[r.file] = true
	}
	for name := range changed {
		if err := encodePagemap(filepath.Join(dir, name), images[name]); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

func decodePagemap(p string) (img *crit.CriuImage, err error) {
	defer func() {
		if r := recover(); r != nil {
			img, err = nil, fmt.Errorf("go-criu failed on it: %v", r)
		}
	}()
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, err = crit.New(f, nil, "", false, false).Decode(&pagemap.PagemapHead{})
	if err != nil {
		return nil, err
	}
	if img.Magic != "PAGEMAP" || len(img.Entries) == 0 {
		return nil, fmt.Errorf("not a pagemap")
	}
	return img, nil
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
