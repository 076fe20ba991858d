package archive

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"filippo.io/age"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-dev/stasis/pkg/untar"
)

// ReadOptions say how to open an archive.
type ReadOptions struct {
	// Identities decrypt an encrypted archive.
	Identities []age.Identity
	// Digest, when set, is the "sha256:..." the archive's bytes must have;
	// a mismatch wins over any other error, since it says why the rest
	// failed.
	Digest string
	// MaxUnpack bounds what Extract writes (see untar.Options.MaxBytes).
	MaxUnpack int64
}

// Open returns the tar stream of an archive file, whatever its
// compression, decrypting it when it is encrypted.
func Open(path string, o ReadOptions) (io.ReadCloser, Compression, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", err
	}
	var src io.Reader = f
	var h *digestReader
	if o.Digest != "" {
		h = &digestReader{r: f, h: sha256.New()}
		src = h
	}
	plain, _, err := decrypter(src, o.Identities)
	if err != nil {
		f.Close()
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	dr, c, err := decompressor(plain)
	if err != nil {
		f.Close()
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	rc := &readCloser{Reader: dr, close: func() error { dr.Close(); return f.Close() }}
	if h != nil {
		rc.verify = func() error { return h.check(o.Digest) }
	}
	return rc, c, nil
}

// digestReader hashes what is read through it.
type digestReader struct {
	r io.Reader
	h hash.Hash
}

func (d *digestReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.h.Write(p[:n])
	return n, err
}

// check reads what is left of the file and compares the digest.
func (d *digestReader) check(want string) error {
	if _, err := io.Copy(d.h, d.r); err != nil {
		return err
	}
	if got := digestOf(d.h); got != want {
		return fmt.Errorf("%w: its sha256 is %s, recorded %s", ErrDigest, got, want)
	}
	return nil
}

// ErrInvalid is returned for input that is no valid checkpoint archive:
// corrupt, truncated, unsafe, or missing what a checkpoint holds.
var ErrInvalid = errors.New("invalid checkpoint archive")

// ErrDigest is returned when an archive's bytes are not those recorded.
var ErrDigest = errors.New("archive was altered or damaged")

type readCloser struct {
	io.Reader
	close  func() error
	verify func() error
}

func (r *readCloser) Close() error { return r.close() }

// Verify checks the digest, when one was asked for.
func (r *readCloser) Verify() error {
	if r.verify == nil {
		return nil
	}
	return r.verify()
}

// maxTrailer is how much may follow the end of an archive's tar.
const maxTrailer = 1 << 20

// openMetadata opens path's tar stream for ReadMetadata: seekable when the
// archive has an index.
func openMetadata(path string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open archive: %w", err)
	}
	if fi, err := f.Stat(); err == nil {
		if s, err := OpenSeekable(f, fi.Size(), ""); err == nil {
			return struct {
				io.ReadSeeker
				io.Closer
			}{io.NewSectionReader(s, 0, s.Size()), f}, nil
		}
	}
	f.Close()
	rc, _, err := Open(path, ReadOptions{})
	return rc, err
}

// Extract unpacks the archive at path into dir (which must exist and be
// empty, and private: nothing in it is used before Extract returns) and
// checks that it is a checkpoint: only regular files and directories, no
// more than the limit, the members a restore needs. It stops when ctx is
// done. Any error leaves dir for the caller to remove.
func Extract(ctx context.Context, path, dir string, o ReadOptions) (Dir, error) {
	rc, _, err := Open(path, o)
	if err != nil {
		return "", fmt.Errorf("open archive: %w", err)
	}
	defer rc.Close()
	r := rc.(*readCloser)
	fail := func(err error) (Dir, error) {
		if verr := r.Verify(); verr != nil {
			return "", fmt.Errorf("archive %s: %w", path, verr)
		}
		return "", err
	}
	if err := untar.Extract(ctx, r, dir, untar.Options{Kind: untar.Members, MaxBytes: o.MaxUnpack}); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("archive %s: %w", path, err)
		}
		return fail(unpackError(ctx, "archive "+path, err))
	}
	// Drain what follows the tar's end so a corrupt compressed tail is
	// noticed, but not much of it: tar pads to 10 KiB records at the most,
	// and a small stream of repeated bytes could decompress for minutes.
	n, err := io.Copy(io.Discard, io.LimitReader(r, maxTrailer+1))
	if err != nil {
		return fail(fmt.Errorf("archive %s is corrupt or truncated: %w: %w", path, ErrInvalid, err))
	}
	if n > maxTrailer {
		return fail(fmt.Errorf("archive %s: %w: more than %d bytes follow the end of its tar", path, ErrInvalid, maxTrailer))
	}
	if err := r.Verify(); err != nil {
		return "", fmt.Errorf("archive %s: %w", path, err)
	}
	d := Dir(dir)
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("archive %s: %w", path, err)
	}
	return d, nil
}

// unpackError says what an unpacking's error means for the archive
// (subject, in the message): unsafe, corrupt, or what it says itself.
func unpackError(ctx context.Context, subject string, err error) error {
	switch {
	case ctx.Err() != nil, errors.Is(err, untar.ErrTooLarge), errors.Is(err, ErrDigest):
		return fmt.Errorf("%s: %w", subject, err)
	case errors.Is(err, untar.ErrUnsafePath):
		return fmt.Errorf("%s is unsafe: %w: %w", subject, ErrInvalid, err)
	}
	return fmt.Errorf("%s is corrupt or truncated: %w: %w", subject, ErrInvalid, err)
}

// ReadMetadata reads config.dump and spec.dump from an archive file without
// unpacking the rest; it stops as soon as it has both, which in other
// engines' archives is near the start. stasis' archives have a frame index,
// through which the tar reader seeks past the members in between (the
// pages of a dump that streamed them in first, archive.Begun).
func ReadMetadata(path string) (*Config, *specs.Spec, error) {
	r, err := openMetadata(path)
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
			return nil, nil, fmt.Errorf("archive %s is corrupt or truncated: %w: %w", path, ErrInvalid, err)
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
		if h.Typeflag != tar.TypeReg {
			return nil, nil, fmt.Errorf("archive %s is unsafe: %w: %s is not a regular file", path, ErrInvalid, h.Name)
		}
		if err := json.NewDecoder(io.LimitReader(tr, maxMetadata)).Decode(dst); err != nil {
			return nil, nil, fmt.Errorf("archive %s: %w: %s: %w", path, ErrInvalid, h.Name, err)
		}
	}
	if cfg == nil || spec == nil {
		return nil, nil, fmt.Errorf("archive %s is not a checkpoint: %w: it lacks %s or %s", path, ErrInvalid, ConfigDump, SpecDump)
	}
	return cfg, spec, nil
}
