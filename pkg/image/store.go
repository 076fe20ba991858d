// Package image is stasis' local image store: an OCI image layout holding
// every imported image, plus each image's rootfs unpacked once, read-only,
// to serve as the lower layer of its containers' overlay mounts.
package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/pkg/untar"
)

// ErrNotFound is returned when no image matches a name or ID.
var ErrNotFound = errors.New("image not found")

const refAnnotation = "org.opencontainers.image.ref.name"

// Image is one image in the store.
type Image struct {
	Name    string
	ID      string // config digest hex, as Podman and CRI-O report it
	Digest  string // manifest digest
	Size    int64  // compressed layers
	Created time.Time
	Config  v1.Config
	// Rootfs is the unpacked, flattened filesystem of the image.
	Rootfs string
}

// Store is an image store rooted at a directory.
type Store struct {
	dir string
}

// Open opens (creating if needed) the store under dir.
func Open(dir string) (*Store, error) {
	s := &Store{dir: dir}
	for _, d := range []string{s.layoutDir(), s.rootfsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(s.layoutDir(), "index.json")); os.IsNotExist(err) {
		if _, err := layout.Write(s.layoutDir(), empty.Index); err != nil {
			return nil, fmt.Errorf("init image layout: %w", err)
		}
	}
	return s, nil
}

func (s *Store) layoutDir() string { return filepath.Join(s.dir, "oci") }
func (s *Store) rootfsDir() string { return filepath.Join(s.dir, "rootfs") }

// lock serialises writers of the store across processes.
func (s *Store) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// NormalizeName gives short names the "localhost/" registry and ":latest"
// tag Podman gives them, so the same string names an image in both tools.
func NormalizeName(name string) string {
	first, _, hasSlash := strings.Cut(name, "/")
	if !hasSlash || !(strings.ContainsAny(first, ".:") || first == "localhost") {
		name = "localhost/" + name
	}
	last := name[strings.LastIndex(name, "/")+1:]
	if !strings.Contains(last, ":") && !strings.Contains(last, "@") {
		name += ":latest"
	}
	return name
}

// Add stores img under name, replacing any image of that name, and unpacks
// its rootfs. The rootfs is unpacked to a temporary directory and renamed,
// so an interrupted import leaves no half-made image behind.
func (s *Store) Add(name string, img v1.Image) (*Image, error) {
	name = NormalizeName(name)
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	id, err := img.ConfigName()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	rootfs := filepath.Join(s.rootfsDir(), id.Hex)
	if _, err := os.Stat(rootfs); os.IsNotExist(err) {
		if err := unpack(img, rootfs); err != nil {
			return nil, err
		}
	}
	p := layout.Path(s.layoutDir())
	if err := p.ReplaceImage(img, match.Annotation(refAnnotation, name),
		layout.WithAnnotations(map[string]string{refAnnotation: name})); err != nil {
		return nil, fmt.Errorf("write image %s: %w", name, err)
	}
	return s.Get(name)
}

func unpack(img v1.Image, dest string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(dest), ".unpack-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	rc := mutate.Extract(img)
	defer rc.Close()
	if err := untar.Extract(rc, tmp, untar.Options{}); err != nil {
		return fmt.Errorf("unpack image: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, dest)
}

// List returns every image in the store, sorted by name.
func (s *Store) List() ([]*Image, error) {
	p := layout.Path(s.layoutDir())
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []*Image
	for _, d := range im.Manifests {
		name := d.Annotations[refAnnotation]
		img, err := p.Image(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", name, err)
		}
		i, err := s.describe(name, d.Digest, img)
		if err != nil {
			return nil, err
		}
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out, nil
}

// Get finds an image by name (normalised as on import) or by ID or ID prefix
// of at least 12 characters.
func (s *Store) Get(ref string) (*Image, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	norm := NormalizeName(ref)
	id := strings.TrimPrefix(ref, "sha256:")
	for _, i := range all {
		if i.Name == ref || i.Name == norm {
			return i, nil
		}
	}
	if len(id) >= 12 {
		for _, i := range all {
			if strings.HasPrefix(i.ID, id) {
				return i, nil
			}
		}
	}
	return nil, fmt.Errorf("%w: %s (import it with 'stasis image import')", ErrNotFound, ref)
}

// Image returns the stored v1.Image for a store entry.
func (s *Store) Image(i *Image) (v1.Image, error) {
	h, err := v1.NewHash(i.Digest)
	if err != nil {
		return nil, err
	}
	return layout.Path(s.layoutDir()).Image(h)
}

func (s *Store) describe(name string, digest v1.Hash, img v1.Image) (*Image, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image %s config: %w", name, err)
	}
	id, err := img.ConfigName()
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	var size int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return nil, err
		}
		size += n
	}
	return &Image{
		Name:    name,
		ID:      id.Hex,
		Digest:  digest.String(),
		Size:    size,
		Created: cfg.Created.Time,
		Config:  cfg.Config,
		Rootfs:  filepath.Join(s.rootfsDir(), id.Hex),
	}, nil
}
