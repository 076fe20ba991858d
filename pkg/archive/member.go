package archive

import (
	"errors"
	"fmt"
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
	b, err := untar.ReadFile(dir, name, max)
	if errors.Is(err, untar.ErrUnsafePath) {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return b, err
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
