package inspect

import (
	"encoding/binary"
	"fmt"
	"io"
	"path/filepath"

	"github.com/checkpoint-restore/go-criu/v8/magic"

	"github.com/stasis-dev/stasis/pkg/archive"
)

// go-criu's crit (v8.4.0) trusts the images it decodes: it allocates an
// entry's recorded size (4 GiB for a 16-byte file), and its Explore
// functions panic on an image with another image's magic, on one with no
// entry, and on a process whose parent is missing. A checkpoint from
// elsewhere is hostile input, so every image crit reads here is first
// checked to be a sequence of entries that fit the file (Checkpoint.check,
// once, for the images the call at hand reads),
// and each call into crit runs under decode, which turns a panic that is
// still left into a corrupt-image error rather than a crash.

// entryImages are the images inspect hands to crit, by name pattern, with
// their magic (go-criu's names): each is the common magic, its own, then
// entries of a 4-byte size and that many bytes. mustHaveEntry are those
// crit indexes without looking.
var (
	entryImages = map[string]string{
		"pstree.img": "PSTREE", "core-*.img": "CORE", "mm-*.img": "MM", "pagemap-*.img": "PAGEMAP", "files.img": "FILES",
		"fdinfo-*.img": "FDINFO", "fs-*.img": "FS", "ids-*.img": "IDS", "mountpoints-*.img": "MNTS",
	}
	// fileImages are what crit's ExploreFds and ExploreSk read.
	fileImages    = []string{"fdinfo-*.img", "files.img", "fs-*.img", "ids-*.img"}
	mustHaveEntry = map[string]bool{"pstree.img": true, "core-*.img": true, "mm-*.img": true, "fs-*.img": true, "ids-*.img": true}
	magics        = magic.LoadMagic()
)

// maxImage bounds an image read whole to check it.
const maxImage = 256 << 20

// check checks the framing of the images of these patterns (keys of
// entryImages) that crit is about to decode, each image once.
func (c *Checkpoint) check(patterns ...string) error {
	for _, pattern := range patterns {
		files, err := filepath.Glob(filepath.Join(c.dir.Images(), pattern))
		if err != nil {
			return err
		}
		for _, p := range files {
			name := filepath.Base(p)
			if c.checked[name] {
				continue
			}
			if err := checkImage(c.dir, name, entryImages[pattern], mustHaveEntry[pattern]); err != nil {
				return corrupt(name, err)
			}
			c.checked[name] = true
		}
	}
	return nil
}

func checkImage(d archive.Dir, name, kind string, needEntry bool) error {
	f, err := d.OpenMember(archive.CheckpointDir + "/" + name)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxImage+1))
	if err != nil {
		return err
	}
	if len(b) > maxImage {
		return fmt.Errorf("larger than %d bytes", maxImage)
	}
	if len(b) < 8 {
		return fmt.Errorf("no magic")
	}
	if m := uint64(binary.LittleEndian.Uint32(b)); m != magics.ByName["IMG_COMMON"] {
		return fmt.Errorf("wrong magic %#x, not a CRIU image", m)
	}
	if m := uint64(binary.LittleEndian.Uint32(b[4:])); m != magics.ByName[kind] {
		return fmt.Errorf("wrong magic %#x (%s), want %s", m, magics.ByValue[m], kind)
	}
	off, entries := 8, 0
	for off < len(b) {
		if len(b)-off < 4 {
			return fmt.Errorf("a truncated entry size at byte %d", off)
		}
		size := int(binary.LittleEndian.Uint32(b[off:]))
		off += 4
		if size > len(b)-off {
			return fmt.Errorf("an entry of %d bytes at byte %d, with %d left", size, off, len(b)-off)
		}
		off += size
		entries++
	}
	if needEntry && entries == 0 {
		return fmt.Errorf("no entry")
	}
	return nil
}

// decode runs a call into crit, turning its panic on hostile input into
// an error about what.
func decode[T any](what string, f func() (T, error)) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = corrupt(what, fmt.Errorf("go-criu failed on it: %v", r))
		}
	}()
	v, err = f()
	if err != nil {
		err = corrupt(what, err)
	}
	return v, err
}
