// Package untar unpacks tar streams into a directory without letting any
// entry land outside it. Archives here come from other machines and other
// engines, so every name, link target and hard link is treated as hostile.
package untar

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// ErrUnsafePath reports an entry that would escape the destination.
var ErrUnsafePath = errors.New("unsafe path in archive")

// Options tune what an extraction accepts.
type Options struct {
	// Filter, when set, is called with each cleaned entry name; entries for
	// which it returns false are skipped.
	Filter func(name string) bool
	// NoDevices refuses character and block devices (checkpoint metadata
	// never holds any; a rootfs diff may).
	NoDevices bool
}

// CleanName validates an archive member name and returns it relative to the
// archive root ("" for the root itself). Absolute names and names that climb
// out with ".." are refused rather than silently rewritten: a well-formed
// archive never has them, so their presence means the archive is hostile or
// broken.
func CleanName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute name %q", ErrUnsafePath, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q climbs out of the root", ErrUnsafePath, name)
		}
	}
	c := path.Clean("/" + name)
	return strings.TrimPrefix(c, "/"), nil
}

// SymlinkEscapes reports whether a relative symlink target, resolved from the
// link's own directory, climbs above the root. Absolute targets are resolved
// inside the container's root at run time, so they are not escapes.
func SymlinkEscapes(linkName, target string) bool {
	if path.IsAbs(target) {
		return false
	}
	depth := strings.Count(path.Dir("/"+linkName), "/")
	if path.Dir("/"+linkName) == "/" {
		depth = 0
	}
	for _, part := range strings.Split(target, "/") {
		switch part {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return true
			}
		default:
			depth++
		}
	}
	return false
}

// Extract unpacks r into dir, which must exist. Parent directories are
// resolved with securejoin so that a symlink planted by an earlier entry
// cannot redirect a later one outside dir.
func Extract(r io.Reader, dir string, opts Options) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		name, err := CleanName(hdr.Name)
		if err != nil {
			return err
		}
		if opts.Filter != nil && !opts.Filter(name) {
			continue
		}
		if name == "" {
			continue
		}
		if err := extractOne(tr, hdr, dir, name, opts); err != nil {
			return fmt.Errorf("extract %s: %w", name, err)
		}
	}
}

func extractOne(tr *tar.Reader, hdr *tar.Header, dir, name string, opts Options) error {
	parent, err := securejoin.SecureJoin(dir, path.Dir(name))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	target := filepath.Join(parent, path.Base(name))
	mode := os.FileMode(hdr.Mode).Perm() | os.FileMode(hdr.Mode)&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)
	tarMode := hdr.FileInfo().Mode()

	// An existing entry is replaced, except a directory by a directory.
	if fi, err := os.Lstat(target); err == nil {
		if !(fi.IsDir() && hdr.Typeflag == tar.TypeDir) {
			if err := os.RemoveAll(target); err != nil {
				return err
			}
		}
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(target, 0o755); err != nil && !os.IsExist(err) {
			return err
		}
	case tar.TypeReg, tar.TypeRegA:
		f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, tr); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if SymlinkEscapes(name, hdr.Linkname) {
			return fmt.Errorf("%w: symlink %q -> %q points outside the root", ErrUnsafePath, name, hdr.Linkname)
		}
		return lchown(os.Symlink(hdr.Linkname, target), target, hdr)
	case tar.TypeLink:
		src, err := CleanName(hdr.Linkname)
		if err != nil {
			return err
		}
		resolved, err := securejoin.SecureJoin(dir, src)
		if err != nil {
			return err
		}
		if err := os.Link(resolved, target); err != nil {
			return err
		}
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if opts.NoDevices && hdr.Typeflag != tar.TypeFifo {
			return fmt.Errorf("%w: device node %q", ErrUnsafePath, name)
		}
		dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
		kind := uint32(unix.S_IFIFO)
		if tarMode&os.ModeCharDevice != 0 {
			kind = unix.S_IFCHR
		} else if tarMode&os.ModeDevice != 0 {
			kind = unix.S_IFBLK
		}
		if err := unix.Mknod(target, kind|uint32(mode.Perm()), dev); err != nil {
			return err
		}
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	if err := lchown(nil, target, hdr); err != nil {
		return err
	}
	if err := os.Chmod(target, mode); err != nil {
		return err
	}
	for k, v := range hdr.PAXRecords {
		if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			// Best effort: security.* and trusted.* may be refused and are
			// not needed for the processes to run.
			_ = unix.Lsetxattr(target, x, []byte(v), 0)
		}
	}
	return os.Chtimes(target, hdr.AccessTime, hdr.ModTime)
}

func lchown(prev error, target string, hdr *tar.Header) error {
	if prev != nil {
		return prev
	}
	return os.Lchown(target, hdr.Uid, hdr.Gid)
}
