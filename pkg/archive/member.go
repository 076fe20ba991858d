package archive

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/stasis-dev/stasis/pkg/untar"
)

// maxMetadata bounds the JSON members (config.dump, spec.dump,
// deleted.files) read into memory.
const maxMetadata = 64 << 20

// OpenMember opens the regular file name of the unpacked checkpoint in
// dir, through no symlink and without blocking (untar.OpenFile): a link
// or FIFO planted where a member should be is an invalid archive.
func OpenMember(dir, name string) (*os.File, error) {
	f, err := untar.OpenFile(dir, name)
	if errors.Is(err, untar.ErrUnsafePath) {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return f, err
}

// ReadMember reads a member file of at most max bytes (see OpenMember).
func ReadMember(dir, name string, max int64) ([]byte, error) {
	f, err := OpenMember(dir, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalid, name, max)
	}
	return b, nil
}

// memberDir checks that name inside dir is a directory, not a link to one.
func memberDir(dir, name string) error {
	err := untar.CheckDir(dir, name)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: not a checkpoint archive: %s is missing", ErrInvalid, name)
	case err != nil:
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}
