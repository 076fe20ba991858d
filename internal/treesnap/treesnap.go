// Package treesnap describes a directory tree entry by entry, so that a
// test can tell whether anything in it changed: mode, inode and links,
// owner, size, times, contents, link target, xattrs. The fuzz targets and
// the e2e tests of hostile input use it to show that nothing outside the
// place an archive belongs was written. MustTake and Watchdog are the
// helpers those tests share.
package treesnap

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Snapshot maps each entry's path, relative to the tree's base, to its
// description.
type Snapshot map[string]string

// Take describes every entry under base (links are not followed) except
// the subtree skip ("" for none).
func Take(base, skip string) (Snapshot, error) {
	out := Snapshot{}
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v ino=%d nlink=%d %d:%d size=%d mtime=%d", fi.Mode(), st.Ino, st.Nlink, st.Uid, st.Gid, fi.Size(), fi.ModTime().UnixNano())
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" sha256=%x", sha256.Sum256(b))
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			desc += " -> " + l
		}
		if n, err := unix.Llistxattr(p, make([]byte, 4096)); err == nil {
			desc += fmt.Sprintf(" xattrs=%d", n)
		}
		rel, _ := filepath.Rel(base, p)
		out[rel] = desc
		return nil
	})
	return out, err
}

// Diff lists what differs from before to s, a line an entry ("" when
// nothing does).
func (s Snapshot) Diff(before Snapshot) string {
	var lines []string
	for k, v := range before {
		if now, ok := s[k]; !ok {
			lines = append(lines, "- "+k+" "+v)
		} else if now != v {
			lines = append(lines, "~ "+k+" "+v+" => "+now)
		}
	}
	for k, v := range s {
		if _, ok := before[k]; !ok {
			lines = append(lines, "+ "+k+" "+v)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
