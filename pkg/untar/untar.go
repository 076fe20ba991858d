// Package untar unpacks tar streams into a directory without letting any
// entry land outside it. Archives here come from other machines and other
// engines and are unpacked as root, so every name, type, mode, xattr, link
// and size is treated as hostile: what is not known to be harmless is
// refused with an error naming the entry, never silently rewritten.
package untar

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// ErrUnsafePath reports an entry that would escape the destination, or
// one of a type the extraction does not accept.
var ErrUnsafePath = errors.New("unsafe entry in archive")

// ErrTooLarge reports an archive that unpacks to more than the limit.
var ErrTooLarge = errors.New("archive unpacks to more than allowed")

// Kind says what a tar is expected to hold.
type Kind int

const (
	// Members is a container of files (a checkpoint archive, an OCI
	// layout): only regular files and directories.
	Members Kind = iota
	// Tree is a filesystem tree (an image layer, a rootfs diff): also
	// symlinks, hard links and FIFOs. Device nodes are refused, since a
	// container's devices come from its runtime; overlayfs and OCI
	// whiteouts are translated into removals; only user.* xattrs, and
	// security.capability on regular files, are set.
	Tree
)

// Options tune an extraction.
type Options struct {
	Kind Kind
	// MaxBytes bounds what the extraction may write (file contents plus a
	// block per entry). The bound is never above the free space of dir's
	// filesystem less 5 % of its size; 0 means just that.
	MaxBytes int64
	// Skip, when it returns true for an entry, leaves the entry out: its
	// contents are not read (a reader that can seek passes over them).
	Skip func(hdr *tar.Header, name string) bool
}

// blockCost is what each entry is counted for besides its contents, so a
// tar of a million empty files is bounded too.
const blockCost = 512

// Limit is the bound an extraction into dir works under: the free space
// of its filesystem less 5 % of its size, or max when that is lower.
func Limit(dir string, max int64) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", dir, err)
	}
	free := int64(st.Bavail) * st.Bsize
	limit := free - int64(st.Blocks)*st.Bsize/20
	if limit < 0 {
		limit = 0
	}
	if max > 0 && max < limit {
		limit = max
	}
	return limit, nil
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
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: %q has a NUL byte", ErrUnsafePath, name)
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
// resolved inside dir with securejoin (absolute symlinks as the container
// sees them), so a symlink planted by an earlier entry cannot redirect a
// later one outside dir. It stops when ctx is done.
func Extract(ctx context.Context, r io.Reader, dir string, o Options) error {
	limit, err := Limit(dir, o.MaxBytes)
	if err != nil {
		return err
	}
	x := &extractor{ctx: ctx, dir: dir, o: o, limit: limit, left: limit, created: map[string]bool{}}
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return x.finish()
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		name, err := CleanName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "" || (o.Skip != nil && o.Skip(hdr, name)) {
			continue
		}
		if err := x.entry(tr, hdr, name); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
}

type extractor struct {
	ctx         context.Context
	dir         string
	o           Options
	limit, left int64
	// created is every name this extraction made: an opaque directory
	// hides what was there before, not what the same tar put in it.
	created map[string]bool
	// dirs get their times last: every entry made inside moves them.
	dirs []dirTime
}

type dirTime struct {
	name         string
	atime, mtime time.Time
}

// OCI whiteouts: ".wh.NAME" removes NAME, ".wh..wh..opq" hides what the
// directory held before.
const (
	whiteoutPrefix = ".wh."
	opaqueWhiteout = ".wh..wh..opq"
)

func (x *extractor) entry(tr io.Reader, hdr *tar.Header, name string) error {
	if x.o.Kind == Tree {
		if base := path.Base(name); strings.HasPrefix(base, whiteoutPrefix) {
			if base == opaqueWhiteout {
				return x.hideOld(path.Dir(name))
			}
			return x.remove(path.Join(path.Dir(name), strings.TrimPrefix(base, whiteoutPrefix)))
		}
	}
	if err := x.accept(hdr); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	if hdr.Typeflag == tar.TypeChar {
		return x.remove(name) // an overlayfs whiteout (accept checked 0:0)
	}
	if err := x.charge(hdr); err != nil {
		return err
	}
	parent, err := securejoin.SecureJoin(x.dir, path.Dir(name))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	target := filepath.Join(parent, path.Base(name))
	// An existing entry is replaced, except a directory by a directory.
	// parent is inside dir and RemoveAll does not follow a symlink it
	// removes, so only what is inside dir goes.
	if fi, err := os.Lstat(target); err == nil && !(fi.IsDir() && hdr.Typeflag == tar.TypeDir) {
		// Members unpack into a directory of the caller's (a work directory
		// holding its lock): only what the archive itself put there may be
		// replaced.
		if x.o.Kind == Members && !x.created[name] {
			return fmt.Errorf("%w: it would replace what was in %s before the archive", ErrUnsafePath, x.dir)
		}
		if err := os.RemoveAll(target); err != nil {
			return err
		}
	}
	x.created[name] = true
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(target, 0o700); err != nil && !os.IsExist(err) {
			return err
		}
		if x.o.Kind == Tree && hdr.PAXRecords["SCHILY.xattr.trusted.overlay.opaque"] == "y" {
			if err := x.hideOld(name); err != nil {
				return err
			}
		}
		return x.finishNode(target, name, hdr, true)
	case tar.TypeReg, tar.TypeGNUSparse:
		return x.writeFile(tr, target, name, hdr)
	case tar.TypeSymlink:
		if SymlinkEscapes(name, hdr.Linkname) {
			return fmt.Errorf("%w: symlink to %q points outside the root", ErrUnsafePath, hdr.Linkname)
		}
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return err
		}
		if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
		return lutimes(target, hdr.AccessTime, hdr.ModTime)
	case tar.TypeLink:
		src, err := CleanName(hdr.Linkname)
		if err != nil {
			return err
		}
		resolved, err := securejoin.SecureJoin(x.dir, src)
		if err != nil {
			return err
		}
		if fi, err := os.Lstat(resolved); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("%w: hard link to %q, which is not a regular file unpacked before it", ErrUnsafePath, hdr.Linkname)
		}
		return os.Link(resolved, target)
	case tar.TypeFifo:
		if err := unix.Mknod(target, unix.S_IFIFO|0o600, 0); err != nil {
			return err
		}
		return x.finishNode(target, name, hdr, false)
	}
	return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
}

// accept refuses entry types the kind of tar may not hold.
func (x *extractor) accept(hdr *tar.Header) error {
	kind := ""
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeDir, tar.TypeXGlobalHeader:
		return nil
	case tar.TypeSymlink:
		kind = "a symlink"
	case tar.TypeLink:
		kind = "a hard link"
	case tar.TypeFifo:
		kind = "a FIFO"
	case tar.TypeChar:
		if x.o.Kind == Tree && hdr.Devmajor == 0 && hdr.Devminor == 0 {
			return nil
		}
		return fmt.Errorf("%w: character device %d:%d: devices come from the runtime, not from files", ErrUnsafePath, hdr.Devmajor, hdr.Devminor)
	case tar.TypeBlock:
		return fmt.Errorf("%w: block device %d:%d: devices come from the runtime, not from files", ErrUnsafePath, hdr.Devmajor, hdr.Devminor)
	default:
		return fmt.Errorf("%w: unsupported tar entry type %q", ErrUnsafePath, hdr.Typeflag)
	}
	if x.o.Kind == Members {
		return fmt.Errorf("%w: it is %s, and a checkpoint archive holds only regular files and directories", ErrUnsafePath, kind)
	}
	return nil
}

// charge counts an entry against the limit before a byte of it is written.
func (x *extractor) charge(hdr *tar.Header) error {
	cost := int64(blockCost)
	if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeGNUSparse {
		if hdr.Size < 0 {
			return fmt.Errorf("%w: negative size", ErrUnsafePath)
		}
		cost += hdr.Size
	}
	if cost > x.left {
		return fmt.Errorf("%w: %d bytes more would pass the limit of %d bytes (--max-unpack, and the free space of %s less 5%%)",
			ErrTooLarge, cost, x.limit, x.dir)
	}
	x.left -= cost
	return nil
}

func (x *extractor) writeFile(tr io.Reader, target, name string, hdr *tar.Header) error {
	f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(f, ctxReader{x.ctx, tr}); err != nil {
		return err
	}
	if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	// After the chown, which clears setuid and setgid bits.
	if err := f.Chmod(mode(hdr)); err != nil {
		return err
	}
	if err := x.xattrs(int(f.Fd()), name, hdr, true); err != nil {
		return err
	}
	if ts := timespecs(hdr.AccessTime, hdr.ModTime); ts != nil {
		if err := unix.UtimesNanoAt(int(f.Fd()), "", ts, unix.AT_EMPTY_PATH); err != nil {
			return err
		}
	}
	return f.Close()
}

// mode is an entry's permission bits, setuid, setgid and sticky included.
func mode(hdr *tar.Header) os.FileMode {
	return hdr.FileInfo().Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
}

// finishNode gives a directory or FIFO its owner, mode and xattrs; a
// directory's times wait for the end.
func (x *extractor) finishNode(target, name string, hdr *tar.Header, isDir bool) error {
	if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	if err := os.Chmod(target, mode(hdr)); err != nil {
		return err
	}
	if !isDir {
		return lutimes(target, hdr.AccessTime, hdr.ModTime)
	}
	fd, err := unix.Open(target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := x.xattrs(fd, name, hdr, false); err != nil {
		return err
	}
	x.dirs = append(x.dirs, dirTime{name, hdr.AccessTime, hdr.ModTime})
	return nil
}

// KeptXattr says whether an extended attribute belongs to a container, so
// that a rootfs diff carries it and a Tree extraction sets it: user.*, and
// a regular file's security.capability (file capabilities). Others
// (trusted.*, security.selinux, system.*) would be set as host root, and
// trusted.overlay.* would reach into the overlay that the rootfs is.
func KeptXattr(name string, regular bool) bool {
	return strings.HasPrefix(name, "user.") || (regular && name == "security.capability")
}

// xattrs sets the extended attributes a container may own (KeptXattr).
func (x *extractor) xattrs(fd int, name string, hdr *tar.Header, regular bool) error {
	if x.o.Kind != Tree {
		return nil
	}
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if !KeptXattr(attr, regular) {
			continue
		}
		err := unix.Fsetxattr(fd, attr, []byte(v), 0)
		if errors.Is(err, unix.ENOTSUP) && strings.HasPrefix(attr, "user.") {
			continue // a filesystem without user xattrs loses nothing it could hold
		}
		if err != nil {
			return fmt.Errorf("set xattr %s: %w", attr, err)
		}
	}
	return nil
}

// remove deletes name inside dir (a whiteout).
func (x *extractor) remove(name string) error {
	c, err := CleanName(name)
	if err != nil || c == "" {
		return fmt.Errorf("%w: whiteout of %q", ErrUnsafePath, name)
	}
	parent, err := securejoin.SecureJoin(x.dir, path.Dir(c))
	if err != nil {
		return err
	}
	if ok, err := isDir(parent); !ok {
		return err // nothing is inside what is no directory
	}
	return os.RemoveAll(filepath.Join(parent, path.Base(c)))
}

// isDir reports whether p is a directory, not a link to one. os.RemoveAll
// and os.ReadDir open a path to look inside it, and the open of a FIFO
// waits for a writer forever: a tar that makes p a FIFO, then whites out
// p/x, would hang the extraction.
func isDir(p string) (bool, error) {
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	return err == nil && fi.IsDir(), err
}

// hideOld empties a directory of what this extraction did not put there:
// an opaque directory shows none of what lay below it.
func (x *extractor) hideOld(name string) error {
	p, err := securejoin.SecureJoin(x.dir, name)
	if err != nil {
		return err
	}
	if ok, err := isDir(p); !ok {
		return err // hides nothing (see isDir)
	}
	ents, err := os.ReadDir(p)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !x.created[path.Join(name, e.Name())] {
			if err := os.RemoveAll(filepath.Join(p, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// finish sets directory times, innermost first, now that nothing more is
// made inside them.
func (x *extractor) finish() error {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		p, err := securejoin.SecureJoin(x.dir, d.name)
		if err != nil {
			return err
		}
		if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
			continue // replaced by a later entry
		}
		if err := lutimes(p, d.atime, d.mtime); err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
	}
	return nil
}

func lutimes(p string, atime, mtime time.Time) error {
	ts := timespecs(atime, mtime)
	if ts == nil {
		return nil
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// timespecs leaves an unrecorded access time as the modification time,
// and an entry without times (nil) as it is.
func timespecs(atime, mtime time.Time) []unix.Timespec {
	if mtime.IsZero() {
		return nil
	}
	if atime.IsZero() {
		atime = mtime
	}
	return []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
}

// ctxReader stops a long copy when its context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
