package pages

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// OpenSource reads the pagemap of every process in CRIU's image directory
// dir and pairs it with its pages image in images (by file name, e.g.
// pages-1.img), which hold the bytes wherever they lie.
func OpenSource(dir string, images map[string]Image) (*Source, error) {
	files, err := pagemaps(dir)
	if err != nil {
		return nil, err
	}
	src := &Source{Maps: map[uint32]*Map{}, Images: map[uint32]Image{}}
	for pid, name := range files {
		f, err := openImage(dir, name)
		if err != nil {
			return nil, err
		}
		m, err := ReadMap(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		img, ok := images[m.PagesImage()]
		if !ok {
			return nil, fmt.Errorf("%s: its pages image %s is missing", name, m.PagesImage())
		}
		src.Maps[pid] = m
		src.Images[m.PagesID] = img
	}
	return src, nil
}

// pagemaps names each process's pagemap in dir by its pid:
// pagemap-<pid>.img. pagemap-shmem-<id>.img is shared memory, which `criu
// restore` fills itself.
func pagemaps(dir string) (map[uint32]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[uint32]string{}
	for _, e := range ents {
		num, ok := strings.CutPrefix(e.Name(), "pagemap-")
		num, ok2 := strings.CutSuffix(num, ".img")
		pid, err := strconv.ParseUint(num, 10, 32)
		if ok && ok2 && err == nil && e.Type().IsRegular() {
			out[uint32(pid)] = e.Name()
		}
	}
	return out, nil
}

// openImage opens an image of the restore's private unpacking (regular
// files only); O_NOFOLLOW still keeps a link from being followed.
func openImage(dir, name string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, name), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
}

// WriteResident writes into dir the pages images `criu restore
// --lazy-pages` reads itself: of each process's, the runs it does not leave
// to the lazy-pages daemon (stacks, shared and file-backed memory), with
// holes where the lazy runs are; and whole, the pages images no process's
// pagemap names (shared memory's). Lazy memory is never written. It writes
// at most limit bytes and returns how many it wrote.
func WriteResident(dir string, src *Source, images map[string]Image, limit int64) (int64, error) {
	var written int64
	copyRange := func(f *os.File, img Image, off, n int64) error {
		if written+n > limit {
			return fmt.Errorf("resident memory takes more than the %d bytes allowed", limit)
		}
		w, err := io.Copy(io.NewOffsetWriter(f, off), io.NewSectionReader(img, off, n))
		written += w
		if err == nil && w != n {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	done := map[string]bool{}
	for _, m := range src.Maps {
		name := m.PagesImage()
		if done[name] {
			return written, fmt.Errorf("%s: named by two pagemaps", name)
		}
		done[name] = true
		f, err := create(dir, name)
		if err != nil {
			return written, err
		}
		err = f.Truncate(int64(m.End()))
		for _, r := range m.Runs {
			if err == nil && !r.Lazy {
				err = copyRange(f, images[name], int64(r.Offset), int64(r.Length))
			}
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return written, fmt.Errorf("%s: %w", name, err)
		}
	}
	for name, img := range images {
		if done[name] {
			continue
		}
		f, err := create(dir, name)
		if err != nil {
			return written, err
		}
		err = copyRange(f, img, 0, img.Size())
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return written, fmt.Errorf("%s: %w", name, err)
		}
	}
	return written, nil
}

// create makes a new file name in dir: the unpacking left the pages images
// out, so anything there already is not the restore's.
func create(dir, name string) (*os.File, error) {
	if name != filepath.Base(name) {
		return nil, fmt.Errorf("%q is no image name", name)
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("%s is in the way", name)
	}
	return f, err
}
