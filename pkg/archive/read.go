package archive

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	specs "github.com/opencontainers/runtime-spec/specs-go"

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

// ReadMetadata reads config.dump and spec.dump from an archive file without
// unpacking the rest; it stops as soon as it has both, which in archives of
// every engine is near the start.
func ReadMetadata(path string) (*Config, *specs.Spec, error) {
	r, _, err := Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	var cfg *Config
	var spec *specs.Spec
	tr := tar.NewReader(r)
	for cfg == nil || spec == nil {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("archive %s is corrupt or truncated: %w", path, err)
		}
		var dst any
		name, _ := untar.CleanName(h.Name) // "./config.dump" in Podman's archives
		switch name {
		case ConfigDump:
			cfg = &Config{}
			dst = cfg
		case SpecDump:
			spec = &specs.Spec{}
			dst = spec
		default:
			continue
		}
		if err := json.NewDecoder(io.LimitReader(tr, 64<<20)).Decode(dst); err != nil {
			return nil, nil, fmt.Errorf("archive %s: %s: %w", path, h.Name, err)
		}
	}
	if cfg == nil || spec == nil {
		return nil, nil, fmt.Errorf("archive %s is not a checkpoint: it lacks %s or %s", path, ConfigDump, SpecDump)
	}
	return cfg, spec, nil
}
