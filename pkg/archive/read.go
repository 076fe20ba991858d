package archive

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/stasis-dev/stasis/pkg/untar"
)

// Open returns the tar stream of an archive file, whatever its compression.
func Open(path string) (io.ReadCloser, Compression, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", err
	}
	dr, c, err := decompressor(f)
	if err != nil {
		f.Close()
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	return &readCloser{Reader: dr, close: func() error { dr.Close(); return f.Close() }}, c, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r *readCloser) Close() error { return r.close() }

// Extract unpacks the archive at path into dir (which must exist and be
// empty) and checks that it is a checkpoint. Any error leaves dir for the
// caller to remove.
func Extract(path, dir string) (Dir, error) {
	r, _, err := Open(path)
	if err != nil {
		return "", fmt.Errorf("open archive: %w", err)
	}
	defer r.Close()
	if err := untar.Extract(r, dir, untar.Options{NoDevices: true}); err != nil {
		if errors.Is(err, untar.ErrUnsafePath) {
			return "", fmt.Errorf("archive %s is unsafe: %w", path, err)
		}
		return "", fmt.Errorf("archive %s is corrupt or truncated: %w", path, err)
	}
	// Drain what follows the tar's end so a corrupt compressed tail is noticed.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return "", fmt.Errorf("archive %s is corrupt or truncated: %w", path, err)
	}
	d := Dir(dir)
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("archive %s: %w", path, err)
	}
	return d, nil
}
