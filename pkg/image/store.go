// Package image is stasis' local image store: an OCI image layout holding
// every imported image, plus each image's rootfs unpacked once, read-only,
// to serve as the lower layer of its containers' overlay mounts.
package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
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

	"github.com/stasis-dev/stasis/pkg/flock"
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
	// Annotations are the manifest's: checkpoint images say what they
	// are there.
	Annotations map[string]string
	layers      []v1.Hash
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
	s.removeStale()
	if _, err := os.Stat(filepath.Join(s.layoutDir(), "index.json")); os.IsNotExist(err) {
		if _, err := layout.Write(s.layoutDir(), empty.Index); err != nil {
			return nil, fmt.Errorf("init image layout: %w", err)
		}
	}
	return s, nil
}

// removeStale deletes what a killed pull or unpack left: temporary blobs
// and trees a day old, long past any copy still running.
func (s *Store) removeStale() {
	for _, dir := range []string{filepath.Join(s.layoutDir(), "blobs", "sha256"), s.rootfsDir()} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			fi, err := e.Info()
			if err == nil && strings.HasPrefix(e.Name(), ".") && time.Since(fi.ModTime()) > 24*time.Hour {
				os.RemoveAll(filepath.Join(dir, e.Name()))
			}
		}
	}
}

// Dir is the directory the store is rooted at, for Open in another process.
func (s *Store) Dir() string { return s.dir }

func (s *Store) layoutDir() string { return filepath.Join(s.dir, "oci") }
func (s *Store) rootfsDir() string { return filepath.Join(s.dir, "rootfs") }

// lock serialises writers of the store across processes; rlock keeps
// them out while a reader reads the index, which the OCI layout rewrites
// in place. flock(2) locks belong to an open file, so a holder of lock
// must not take rlock: under lock, only the unexported readers are used.
func (s *Store) lock() (func(), error)  { return s.take(flock.Lock) }
func (s *Store) rlock() (func(), error) { return s.take(flock.Shared) }

func (s *Store) take(how func(string) (*os.File, error)) (func(), error) {
	f, err := how(filepath.Join(s.dir, ".lock"))
	if err != nil {
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

// Repository is an image name, normalised, without its tag or digest.
func Repository(name string) string {
	name = NormalizeName(name)
	if i := strings.Index(name, "@"); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	return name
}

// Add stores img under name, replacing any image of that name. Every blob
// is written to a temporary file, checked against its digest and renamed,
// so an interrupted or corrupt pull leaves nothing behind, and blobs the
// store has are not fetched again. progress, when not nil, counts the
// bytes fetched.
func (s *Store) Add(name string, img v1.Image, progress io.Writer) (*Image, error) {
	name = NormalizeName(name)
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	// Blobs this call adds go again if the image does not make it in.
	var added []string
	ok := false
	defer func() {
		if !ok {
			for _, b := range added {
				os.Remove(b)
			}
		}
	}()
	for _, l := range layers {
		b, err := s.writeLayer(l, progress)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", name, err)
		}
		if b != "" {
			added = append(added, b)
		}
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	p := layout.Path(s.layoutDir())
	if err := p.ReplaceImage(img, match.Annotation(refAnnotation, name),
		layout.WithAnnotations(map[string]string{refAnnotation: name})); err != nil {
		return nil, fmt.Errorf("write image %s: %w", name, err)
	}
	ok = true
	return s.get(name)
}

func (s *Store) blobPath(h v1.Hash) string {
	return filepath.Join(s.layoutDir(), "blobs", h.Algorithm, h.Hex)
}

// writeLayer stores a layer's blob unless the store has it, and returns
// the path of a blob it added.
func (s *Store) writeLayer(l v1.Layer, progress io.Writer) (string, error) {
	h, err := l.Digest()
	if err != nil {
		return "", err
	}
	dest := s.blobPath(h)
	if _, err := os.Stat(dest); err == nil {
		return "", nil
	}
	rc, err := l.Compressed()
	if err != nil {
		return "", fmt.Errorf("layer %s: %w", h, err)
	}
	defer rc.Close()
	return dest, writeBlobFile(dest, h, rc, progress)
}

// writeBlobFile copies r into dest by way of a temporary file, and keeps it
// only if its sha256 is h.
func writeBlobFile(dest string, h v1.Hash, r io.Reader, progress io.Writer) error {
	if err := os.MkdirAll(filepath.Dir(dest), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(dest), ".partial-"+h.Hex[:12]+"-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	sum := sha256.New()
	w := io.MultiWriter(f, sum)
	if progress != nil {
		w = io.MultiWriter(f, sum, progress)
	}
	if _, err := io.Copy(w, r); err != nil {
		return fmt.Errorf("layer %s: %w", h, err)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); h.Algorithm != "sha256" || got != h.Hex {
		return fmt.Errorf("layer %s: content does not match its digest (got sha256:%s): corrupt or tampered", h, got)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return os.Rename(f.Name(), dest)
}

// AddFile stores a file as the blob it is (an archive used as a layer).
// With own, the file is stasis' own temporary file and is hard-linked when
// on the same filesystem; a user's file is copied, so the store never
// shares an inode the user could rewrite.
func (s *Store) AddFile(path string, h v1.Hash, own bool) error {
	dest := s.blobPath(h)
	if _, err := os.Stat(dest); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dest), 0o700); err != nil {
		return err
	}
	if own && os.Link(path, dest) == nil {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return writeBlobFile(dest, h, f, nil)
}

// AddPartial stores the blob p, at path, once it is all there and is h,
// and returns the blob's path in the store when this call added it ("" when
// the store had it): the caller removes it if no image comes to use it.
func (s *Store) AddPartial(p *Partial, path string, h v1.Hash) (string, error) {
	if err := p.Verify(h); err != nil {
		return "", err
	}
	dest := s.blobPath(h)
	if _, err := os.Stat(dest); err == nil {
		return "", nil
	}
	return dest, s.AddFile(path, h, true)
}

// Rootfs returns the unpacked, flattened filesystem of an image, unpacking
// it on first use: to a temporary directory, renamed when complete.
func (s *Store) Rootfs(i *Image) (string, error) {
	dest := filepath.Join(s.rootfsDir(), i.ID)
	if _, err := os.Stat(dest); err == nil {
		return dest, nil
	}
	unlock, err := s.lock()
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(dest); err == nil {
		return dest, nil
	}
	img, err := s.image(i)
	if err != nil {
		return "", err
	}
	if err := unpack(img, dest); err != nil {
		return "", fmt.Errorf("image %s: %w", i.Name, err)
	}
	return dest, nil
}

// LayerPath is the blob of an image's only layer: for a checkpoint image,
// the checkpoint archive itself.
func (s *Store) LayerPath(i *Image) (string, error) {
	if len(i.layers) != 1 {
		return "", fmt.Errorf("image %s has %d layers, not one", i.Name, len(i.layers))
	}
	return s.blobPath(i.layers[0]), nil
}

// Remove deletes an image by name and every blob and unpacked rootfs no
// other image uses.
func (s *Store) Remove(ref string) error {
	i, err := s.Get(ref)
	if err != nil {
		return err
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	p := layout.Path(s.layoutDir())
	if err := p.RemoveDescriptors(match.Annotation(refAnnotation, i.Name)); err != nil {
		return fmt.Errorf("remove %s: %w", i.Name, err)
	}
	return s.collect()
}

// collect removes blobs and rootfs directories no listed image refers to.
func (s *Store) collect() error {
	all, err := s.list()
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	rootfs := map[string]bool{}
	p := layout.Path(s.layoutDir())
	for _, i := range all {
		rootfs[i.ID] = true
		h, _ := v1.NewHash(i.Digest)
		keep[h.Hex] = true
		img, err := p.Image(h)
		if err != nil {
			return err
		}
		if cfg, err := img.ConfigName(); err == nil {
			keep[cfg.Hex] = true
		}
		for _, l := range i.layers {
			keep[l.Hex] = true
		}
	}
	blobs := filepath.Join(s.layoutDir(), "blobs", "sha256")
	ents, _ := os.ReadDir(blobs)
	for _, e := range ents {
		// Dot names are blobs and rootfs trees still being written.
		if !keep[e.Name()] && !strings.HasPrefix(e.Name(), ".") {
			os.Remove(filepath.Join(blobs, e.Name()))
		}
	}
	dirs, _ := os.ReadDir(s.rootfsDir())
	for _, d := range dirs {
		if !rootfs[d.Name()] && !strings.HasPrefix(d.Name(), ".") {
			os.RemoveAll(filepath.Join(s.rootfsDir(), d.Name()))
		}
	}
	return nil
}

func unpack(img v1.Image, dest string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(dest), ".unpack-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	rc := mutate.Extract(img)
	defer rc.Close()
	// A layer is a tree: modes, owners and file capabilities kept, devices
	// refused. It runs to the end: the store is locked meanwhile, and a
	// half-unpacked tree is removed.
	if err := untar.Extract(context.Background(), rc, tmp, untar.Options{Kind: untar.Tree}); err != nil {
		return fmt.Errorf("unpack image: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, dest)
}

// List returns every image in the store, sorted by name.
func (s *Store) List() ([]*Image, error) {
	unlock, err := s.rlock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.list()
}

func (s *Store) list() ([]*Image, error) {
	idx, im, err := s.index()
	if err != nil {
		return nil, err
	}
	var out []*Image
	for _, d := range im.Manifests {
		i, err := s.describeEntry(idx, d)
		if err != nil {
			return nil, err
		}
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out, nil
}

// index reads the layout's index once: every image of it is read from
// that copy (the layout's own Image re-reads index.json at each call).
func (s *Store) index() (v1.ImageIndex, *v1.IndexManifest, error) {
	idx, err := layout.Path(s.layoutDir()).ImageIndex()
	if err != nil {
		return nil, nil, err
	}
	im, err := idx.IndexManifest()
	return idx, im, err
}

func (s *Store) describeEntry(idx v1.ImageIndex, d v1.Descriptor) (*Image, error) {
	name := d.Annotations[refAnnotation]
	img, err := idx.Image(d.Digest)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	return s.describe(name, d.Digest, img)
}

// Get finds an image by name (normalised as on import) or by ID or ID prefix
// of at least 12 characters.
func (s *Store) Get(ref string) (*Image, error) {
	unlock, err := s.rlock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.get(ref)
}

func (s *Store) get(ref string) (*Image, error) {
	// By name, only the image of that name is read (a restore looks up
	// its checkpoint and signature by name, in a store of many).
	idx, im, err := s.index()
	if err != nil {
		return nil, err
	}
	norm := NormalizeName(ref)
	for _, d := range im.Manifests {
		if name := d.Annotations[refAnnotation]; name == ref || name == norm {
			return s.describeEntry(idx, d)
		}
	}
	id := strings.TrimPrefix(ref, "sha256:")
	if len(id) >= 12 {
		all, err := s.list()
		if err != nil {
			return nil, err
		}
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
	unlock, err := s.rlock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.image(i)
}

func (s *Store) image(i *Image) (v1.Image, error) {
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
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("image %s manifest: %w", name, err)
	}
	i := &Image{
		Name: name, ID: id.Hex, Digest: digest.String(), Created: cfg.Created.Time,
		Config: cfg.Config, Annotations: m.Annotations,
	}
	for _, l := range m.Layers {
		i.Size += l.Size
		i.layers = append(i.layers, l.Digest)
	}
	return i, nil
}
