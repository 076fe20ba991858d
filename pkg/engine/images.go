package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/checkpointimage"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/progress"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/registry"
)

// Pull fetches ref from its registry into the image store under that
// name; a checkpoint image comes with its signature image when the
// registry has one.
func (e *Engine) Pull(ctx context.Context, ref string, o registry.Options) (*image.Image, error) {
	return e.PullAs(ctx, ref, ref, o)
}

// PullAs is Pull storing the image under name: a checkpoint image fetched
// from another node's store keeps the name it has there.
func (e *Engine) PullAs(ctx context.Context, ref, name string, o registry.Options) (*image.Image, error) {
	img, err := registry.Image(ctx, ref, o)
	if err != nil {
		return nil, err
	}
	i, _, err := e.pull(ctx, ref, name, img, nil, o)
	return i, err
}

// pull stores img, which ref resolved to, and, for a checkpoint image,
// its signature image, returned too when this pull added it (one another
// tag of the image stored before is not the caller's to remove). With trust, the
// signature is verified (and checked against x, when set) before the
// layer is fetched: only the manifest and the signature image have been
// read by then. The signature names the manifest's digest, not that of
// an index ref may name.
func (e *Engine) pull(ctx context.Context, ref, name string, img v1.Image, x *provenance.Expect, o registry.Options) (i, sig *image.Image, err error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	var sigImg v1.Image
	var digest v1.Hash
	if _, ok := checkpointimage.Read(m.Annotations); ok {
		if digest, sigImg, err = e.verifyRemote(ctx, ref, img, m, x, o); err != nil {
			return nil, nil, err
		}
	}
	var total int64
	for _, l := range m.Layers {
		total += l.Size
	}
	meter := progress.New(o.Progress, "pull "+ref, total)
	defer meter.Done()
	if i, err = e.Images.Add(name, img, meter); err != nil {
		return nil, nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	if sigImg == nil {
		return i, nil, nil
	}
	sigName := signatureName(i.Name, digest)
	_, had := e.Images.Get(sigName)
	if sig, err = e.Images.Add(sigName, sigImg, nil); err != nil {
		return nil, nil, fmt.Errorf("pull %s: signature: %w", ref, err)
	}
	if had == nil {
		return i, nil, nil
	}
	return i, sig, nil
}

// Push sends a stored image to dest (its own name when dest is empty) and
// returns the digest it has there; a checkpoint image's stored signature
// image goes along.
func (e *Engine) Push(ctx context.Context, local, dest string, o registry.Options) (digest string, err error) {
	i, err := e.Images.Get(local)
	if err != nil {
		return "", err
	}
	img, err := e.Images.Image(i)
	if err != nil {
		return "", err
	}
	if dest == "" {
		dest = i.Name
	}
	// A checkpoint image goes in an index, where the annotations of every
	// engine's family find it.
	var pushed interface{ Digest() (v1.Hash, error) } = img
	if _, ok := checkpointimage.Read(i.Annotations); ok {
		idx, err := checkpointimage.Index(img)
		if err != nil {
			return "", err
		}
		if err := registry.Push(ctx, dest, idx, o); err != nil {
			return "", err
		}
		if err := e.pushSignature(ctx, i, dest, o); err != nil {
			return "", err
		}
		pushed = idx
	} else if err := registry.Push(ctx, dest, img, o); err != nil {
		return "", err
	}
	h, err := pushed.Digest()
	if err != nil {
		return "", err
	}
	return h.String(), nil
}

// BuildCheckpointImage stores a checkpoint archive as checkpoint image ref.
// With own, the archive is stasis' own temporary file and becomes the
// layer blob itself, without a copy.
//
// With imageKeys (public keys, PEM) the layer is encrypted as ocicrypt does
// (CRI-O, containerd and Podman decrypt it with the private key), and the
// plain archive never enters the store.
func (e *Engine) BuildCheckpointImage(archivePath, ref string, own bool, imageKeys [][]byte) (*image.Image, error) {
	cfg, spec, err := archive.ReadMetadata(archivePath)
	if err != nil {
		return nil, fmt.Errorf("image build: %w", err)
	}
	baseDigest := ""
	if base, err := e.baseImage(cfg); err == nil {
		baseDigest = base.Digest
	}
	img, err := checkpointimage.Build(archivePath, cfg, spec, baseDigest)
	if err != nil {
		return nil, fmt.Errorf("image build: %w", err)
	}
	if len(imageKeys) > 0 {
		work, lock, err := e.workDir("encrypt-")
		if err != nil {
			return nil, err
		}
		defer func() { lock.Close(); os.RemoveAll(work) }()
		if img, err = checkpointimage.Encrypt(img, imageKeys, work); err != nil {
			return nil, fmt.Errorf("image build: %w", err)
		}
		i, err := e.Images.Add(ref, img, nil)
		if err != nil {
			return nil, fmt.Errorf("image build: %w", err)
		}
		return i, nil
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	if mt, _ := layers[0].MediaType(); mt == types.OCILayerZStd || isGzip(archivePath) {
		h, err := layers[0].Digest()
		if err != nil {
			return nil, err
		}
		if err := e.Images.AddFile(archivePath, h, own); err != nil {
			return nil, fmt.Errorf("image build: %w", err)
		}
	}
	i, err := e.Images.Add(ref, img, nil)
	if err != nil {
		return nil, fmt.Errorf("image build: %w", err)
	}
	return i, nil
}

func isGzip(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, 2)
	n, _ := f.Read(b)
	return n == 2 && b[0] == 0x1f && b[1] == 0x8b
}

// baseImage finds a checkpoint's base image in the store, by name, then ID.
func (e *Engine) baseImage(cfg *archive.Config) (*image.Image, error) {
	img, err := e.Images.Get(cfg.ImageName())
	if err != nil && cfg.ImageID() != "" {
		img, err = e.Images.Get(cfg.ImageID())
	}
	return img, err
}

// ensureBaseImage finds the base image, pulling it when it is missing and
// its name says where it lives. The digest a checkpoint image records
// pins exactly the image that was checkpointed; the pull is recorded in
// src, whose rollback removes it.
func (e *Engine) ensureBaseImage(ctx context.Context, cfg *archive.Config, src *source, o registry.Options) (*image.Image, error) {
	digest := ""
	if src.image != nil {
		digest = src.image.BaseImageDigest
	}
	img, err := e.baseImage(cfg)
	if err == nil {
		return img, nil
	}
	name := cfg.ImageName()
	if name == "" || strings.HasPrefix(image.NormalizeName(name), "localhost/") {
		return nil, fmt.Errorf("the checkpoint's base image %q is not in the store: import it first (%w)", name, err)
	}
	ref := name
	if digest != "" {
		r, perr := registry.ParseReference(name, o)
		if perr != nil {
			return nil, perr
		}
		ref = r.Context().Digest(digest).String()
	}
	remoteImg, perr := registry.Image(ctx, ref, o)
	if perr != nil {
		return nil, fmt.Errorf("the checkpoint's base image %q is not in the store and cannot be pulled: %w", name, perr)
	}
	if id := cfg.ImageID(); id != "" {
		if got, err := remoteImg.ConfigName(); err == nil && !strings.HasPrefix(got.Hex, strings.TrimPrefix(id, "sha256:")) {
			return nil, fmt.Errorf("base image %s in the registry is not the one checkpointed (ID %s, want %s)", ref, got.Hex[:12], id)
		}
	}
	m := progress.New(o.Progress, "pull "+ref, 0)
	defer m.Done()
	i, err := e.Images.Add(name, remoteImg, m)
	if err == nil {
		src.pulled = append(src.pulled, i.Name)
	}
	return i, err
}

// RemoveImage deletes an image no container uses, and its signature
// image unless another name of the repository holds the same image.
func (e *Engine) RemoveImage(ctx context.Context, ref string) error {
	i, err := e.Images.Get(ref)
	if err != nil {
		return err
	}
	cs, err := e.List(ctx)
	if err != nil {
		return err
	}
	for _, c := range cs {
		if c.ImageID == i.ID && c.Image == i.Name {
			return fmt.Errorf("image %s is used by container %s: remove the container first", i.Name, c.Name)
		}
	}
	sig, serr := e.signatureOf(i)
	if err := e.Images.Remove(i.Name); err != nil {
		return err
	}
	if serr != nil {
		return nil
	}
	all, err := e.Images.List()
	if err != nil {
		return err
	}
	for _, o := range all {
		if o.Digest == i.Digest && image.Repository(o.Name) == image.Repository(i.Name) {
			return nil
		}
	}
	return e.Images.Remove(sig.Name)
}

// errNotLocal: the store has no such image.
var errNotLocal = errors.New("not in the store")

func notCheckpoint(name string) error {
	return fmt.Errorf("image %s is not a checkpoint (it has no checkpoint annotations); run it with 'stasis run'", name)
}

// localCheckpointImage is checkpoint image ref from the store, its
// signature verified against x with trust; errNotLocal if the store has
// no image of that name but ref could be pulled.
func (e *Engine) localCheckpointImage(ref string, o registry.Options, x *provenance.Expect) (*image.Image, error) {
	i, err := e.Images.Get(ref)
	if errors.Is(err, image.ErrNotFound) {
		if _, perr := registry.ParseReference(ref, o); perr == nil {
			return nil, errNotLocal
		}
	}
	if err != nil {
		return nil, err
	}
	if _, ok := checkpointimage.Read(i.Annotations); !ok {
		return nil, notCheckpoint(i.Name)
	}
	return i, e.verifyStored(i, x)
}

// verifyRemote fetches the signature image of checkpoint image img (nil
// when the registry has none) and, with trust, verifies it against x: only
// manifests have been read by then, no layer. It returns img's digest,
// which the signature names.
func (e *Engine) verifyRemote(ctx context.Context, ref string, img v1.Image, m *v1.Manifest, x *provenance.Expect, o registry.Options) (v1.Hash, v1.Image, error) {
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	sig, err := remoteSignature(ctx, ref, digest, o)
	if err != nil {
		return v1.Hash{}, nil, err
	}
	layer := ""
	if len(m.Layers) == 1 {
		layer = m.Layers[0].Digest.String()
	}
	if err := e.verify(ref, sig, digest, layer, x); err != nil {
		return v1.Hash{}, nil, err
	}
	return digest, sig, nil
}

// remoteCheckpointImage is checkpoint image ref in its registry, refused
// before any blob moves when it is no checkpoint.
func remoteCheckpointImage(ctx context.Context, ref string, o registry.Options) (v1.Image, *v1.Manifest, error) {
	img, err := registry.Image(ctx, ref, o)
	if err != nil {
		return nil, nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	if _, ok := checkpointimage.Read(m.Annotations); !ok {
		return nil, nil, notCheckpoint(ref)
	}
	return img, m, nil
}
