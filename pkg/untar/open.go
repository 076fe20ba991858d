package untar

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// OpenFile opens the regular file name inside dir, as unpacked there: the
// path is resolved beneath dir with no symlink followed (openat2
// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), and the open does not block, so a
// FIFO or device where a file should be is refused, not waited on.
func OpenFile(dir, name string) (*os.File, error) {
	fd, err := openBeneath(dir, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK)
	if err == unix.ENOENT {
		return nil, &os.PathError{Op: "open", Path: name, Err: os.ErrNotExist}
	}
	if err == unix.ELOOP || err == unix.EXDEV {
		return nil, fmt.Errorf("%w: %s is a symlink or leads out of its directory", ErrUnsafePath, name)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: %s is a %s, not a regular file", ErrUnsafePath, name, fileKind(fi.Mode()))
	}
	// Back to blocking reads, which a regular file never waits on anyway.
	if err := unix.SetNonblock(fd, false); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// ReadFile reads the regular file name inside dir (see OpenFile), of at
// most max bytes.
func ReadFile(dir, name string, max int64) ([]byte, error) {
	f, err := OpenFile(dir, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrUnsafePath, name, max)
	}
	return b, nil
}

// CheckDir checks that name inside dir is a directory, reached through no
// symlink.
func CheckDir(dir, name string) error {
	fd, err := openBeneath(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
	switch {
	case err == nil:
		return unix.Close(fd)
	case err == unix.ENOENT:
		return &os.PathError{Op: "open", Path: name, Err: os.ErrNotExist}
	default:
		return fmt.Errorf("%w: %s is not a directory of its own", ErrUnsafePath, name)
	}
}

// openBeneath opens name relative to dir (a directory of stasis' own),
// refusing any symlink on the way and any path that leaves dir.
func openBeneath(dir, name string, flags int) (int, error) {
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(dfd)
	return unix.Openat2(dfd, name, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
}

func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "FIFO"
	case m&os.ModeCharDevice != 0:
		return "character device"
	case m&os.ModeDevice != 0:
		return "block device"
	case m&os.ModeSocket != 0:
		return "socket"
	case m.IsDir():
		return "directory"
	}
	return "special file"
}
