package rootfs

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/untar"
)

// Diff writes the container's changes as a tar of added and changed files
// to w and returns the paths (absolute inside the container) it deleted,
// read from overlayfs whiteouts and opaque directories.
func (l Layout) Diff(w io.Writer) ([]string, error) {
	tw := tar.NewWriter(w)
	var deleted []string
	err := filepath.WalkDir(l.Upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(l.Upper, p)
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if isWhiteout(fi) {
			deleted = append(deleted, "/"+filepath.ToSlash(rel))
			return nil
		}
		if fi.Mode()&os.ModeSocket != 0 {
			// tar has no sockets; CRIU binds a listening one again on
			// restore, which makes the file (as Podman's diff skips them).
			return nil
		}
		if fi.IsDir() && isOpaque(p) {
			// Lower may list several directories (a CRI runtime's
			// snapshot layers), as overlayfs' lowerdir does.
			for _, lower := range filepath.SplitList(l.Lower) {
				hidden, err := lowerEntriesHidden(filepath.Join(lower, rel), p)
				if err != nil {
					return err
				}
				for _, h := range hidden {
					deleted = append(deleted, "/"+filepath.ToSlash(filepath.Join(rel, h)))
				}
			}
		}
		hdr, err := archive.FileHeader(p, rel, fi)
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			if hdr.PAXRecords, err = ownXattrs(p, fi.Mode().IsRegular()); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rootfs diff: %w", err)
	}
	return deleted, tw.Close()
}

// ownXattrs are the extended attributes of p that belong to the
// container, those a restore sets again (untar.KeptXattr). overlayfs' own
// trusted.* are not the container's; they were read above as deletions.
func ownXattrs(p string, regular bool) (map[string]string, error) {
	size, err := unix.Llistxattr(p, nil)
	if err != nil || size == 0 {
		return nil, nil // a filesystem without xattrs has none to keep
	}
	buf := make([]byte, size)
	if size, err = unix.Llistxattr(p, buf); err != nil {
		return nil, fmt.Errorf("list xattrs of %s: %w", p, err)
	}
	var out map[string]string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if !untar.KeptXattr(name, regular) {
			continue
		}
		val := make([]byte, 64<<10)
		n, err := unix.Lgetxattr(p, name, val)
		if err != nil {
			return nil, fmt.Errorf("read xattr %s of %s: %w", name, p, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out["SCHILY.xattr."+name] = string(val[:n])
	}
	return out, nil
}

func isWhiteout(fi fs.FileInfo) bool {
	if fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Rdev == 0
}

func isOpaque(dir string) bool {
	buf := make([]byte, 1)
	n, err := unix.Lgetxattr(dir, "trusted.overlay.opaque", buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

// lowerEntriesHidden lists entries of the lower dir that an opaque upper
// dir hides and does not itself contain.
func lowerEntriesHidden(lower, upper string) ([]string, error) {
	ents, err := os.ReadDir(lower)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if _, err := os.Lstat(filepath.Join(upper, e.Name())); os.IsNotExist(err) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// ValidateDeleted refuses a deletion list naming the root or a path that
// climbs out of it; a restore checks this before touching anything.
func ValidateDeleted(paths []string) error {
	for _, p := range paths {
		c, err := untar.CleanName(strings.TrimPrefix(p, "/"))
		if err != nil {
			return fmt.Errorf("deleted.files: %w", err)
		}
		if c == "" {
			return fmt.Errorf("deleted.files: %w: %q names the root", untar.ErrUnsafePath, p)
		}
	}
	return nil
}

// Apply unpacks a rootfs diff into the mounted root and removes the deleted
// paths. Paths are resolved inside root, so neither a hostile diff nor a
// hostile deletion list can touch anything outside it; the diff is a
// untar.Tree (no devices, only the xattrs a container may own) and writes
// at most maxBytes (0: the free space of root's filesystem less 5 %).
func Apply(ctx context.Context, root string, diff io.Reader, deleted []string, maxBytes int64) error {
	if err := ValidateDeleted(deleted); err != nil {
		return err
	}
	if diff != nil {
		plain, err := archive.Decompress(diff)
		if err != nil {
			return fmt.Errorf("apply rootfs diff: %w", err)
		}
		defer plain.Close()
		if err := untar.Extract(ctx, plain, root, untar.Options{Kind: untar.Tree, MaxBytes: maxBytes}); err != nil {
			return fmt.Errorf("apply rootfs diff: %w", err)
		}
	}
	for _, p := range deleted {
		c, _ := untar.CleanName(strings.TrimPrefix(p, "/"))
		parent, err := securejoin.SecureJoin(root, path.Dir(c))
		if err != nil {
			return err
		}
		// os.RemoveAll opens the parent to look inside it, and the open
		// of a FIFO waits for a writer forever; what is no directory
		// holds nothing to delete.
		if fi, err := os.Lstat(parent); err != nil || !fi.IsDir() {
			if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
				return fmt.Errorf("apply deletion of %s: %w", p, err)
			}
			continue
		}
		if err := os.RemoveAll(filepath.Join(parent, path.Base(c))); err != nil {
			return fmt.Errorf("apply deletion of %s: %w", p, err)
		}
	}
	return nil
}

// DiffDigest identifies what a rootfs diff changes: the same for two diffs
// that differ only in directory times. Those move whenever anything, CRIU
// included, creates and removes a file in a directory, and matter to no
// restore; a timeline shares a diff whose digest has not moved.
func DiffDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
		}
		if err != nil {
			return "", err
		}
		mtime := hdr.ModTime.UnixNano()
		if hdr.Typeflag == tar.TypeDir {
			mtime = 0
		}
		fmt.Fprintf(h, "%q %c %o %d:%d %d %q %d\n", hdr.Name, hdr.Typeflag, hdr.Mode, hdr.Uid, hdr.Gid, hdr.Size, hdr.Linkname, mtime)
		if _, err := io.Copy(h, tr); err != nil {
			return "", err
		}
	}
}
