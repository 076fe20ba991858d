package engine

import (
	"context"
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/stasis-dev/stasis/pkg/checkpointimage"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/registry"
)

// signatureName is where the store keeps the signature image of the
// image stored as name with manifest digest manifest: under cosign's tag,
// in the image's repository, as in a registry.
func signatureName(name string, manifest v1.Hash) string {
	return image.Repository(name) + ":" + provenance.SignatureTag(manifest)
}

// SignatureName is the name the store keeps stored image i's signature
// under ("" when i's digest does not parse).
func SignatureName(i *image.Image) string {
	h, err := v1.NewHash(i.Digest)
	if err != nil {
		return ""
	}
	return signatureName(i.Name, h)
}

// SignImage signs the stored checkpoint image ref with signer, claims c
// (its Archive set to the image's layer digest), and stores the signature
// image, which a push of ref then carries along. A signature stored
// before is replaced.
func (e *Engine) SignImage(ref string, signer signature.Signer, c provenance.Claims) error {
	i, err := e.Images.Get(ref)
	if err != nil {
		return fmt.Errorf("sign %s: %w", ref, err)
	}
	if _, ok := checkpointimage.Read(i.Annotations); !ok {
		return fmt.Errorf("sign %s: not a checkpoint image (only checkpoint images are signed)", i.Name)
	}
	layer, err := e.Images.LayerPath(i)
	if err != nil {
		return fmt.Errorf("sign %s: %w", i.Name, err)
	}
	c.Archive = blobDigest(layer)
	h, err := v1.NewHash(i.Digest)
	if err != nil {
		return fmt.Errorf("sign %s: %w", i.Name, err)
	}
	sig, err := provenance.Sign(signer, image.Repository(i.Name), h, c)
	if err != nil {
		return fmt.Errorf("sign %s: %w", i.Name, err)
	}
	if _, err := e.Images.Add(signatureName(i.Name, h), sig, nil); err != nil {
		return fmt.Errorf("sign %s: %w", i.Name, err)
	}
	return nil
}

// Signature is the stored signature image of the stored image ref
// (image.ErrNotFound when it has none).
func (e *Engine) Signature(ref string) (*image.Image, error) {
	i, err := e.Images.Get(ref)
	if err != nil {
		return nil, err
	}
	return e.signatureOf(i)
}

func (e *Engine) signatureOf(i *image.Image) (*image.Image, error) {
	h, err := v1.NewHash(i.Digest)
	if err != nil {
		return nil, err
	}
	return e.Images.Get(signatureName(i.Name, h))
}

// remoteSignature is the signature image of the image ref names in its
// registry, whose manifest digest is manifest: nil when there is none.
func remoteSignature(ctx context.Context, ref string, manifest v1.Hash, o registry.Options) (v1.Image, error) {
	r, err := registry.ParseReference(ref, o)
	if err != nil {
		return nil, err
	}
	sig, err := registry.Image(ctx, r.Context().Tag(provenance.SignatureTag(manifest)).String(), o)
	if errors.Is(err, registry.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if _, err := provenance.Bounded(sig); err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	return sig, nil
}

// pushSignature sends the stored signature image of checkpoint image i,
// if it has one, to dest's repository, tagged from i's manifest digest
// (the index Push wraps around the manifest leaves it as it is).
func (e *Engine) pushSignature(ctx context.Context, i *image.Image, dest string, o registry.Options) error {
	sig, err := e.signatureOf(i)
	if errors.Is(err, image.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	img, err := e.Images.Image(sig)
	if err != nil {
		return err
	}
	h, err := v1.NewHash(i.Digest)
	if err != nil {
		return err
	}
	r, err := registry.ParseReference(dest, o)
	if err != nil {
		return err
	}
	o.Progress = nil // a few hundred bytes
	if err := registry.Push(ctx, r.Context().Tag(provenance.SignatureTag(h)).String(), img, o); err != nil {
		return fmt.Errorf("signature of %s: %w", i.Name, err)
	}
	return nil
}

// verify admits checkpoint image ref (manifest digest manifest, layer
// digest layer) by its signature image sig (nil: none), when the engine
// has trust: a signature by a trusted key that says of it what x says,
// x's Archive by default the layer; x nil: any such signature.
func (e *Engine) verify(ref string, sig v1.Image, manifest v1.Hash, layer string, x *provenance.Expect) error {
	if e.trust == nil {
		return nil
	}
	want := provenance.Anything
	if x != nil {
		want = *x
		if want.Archive == "" {
			want.Archive = layer
		}
	}
	if _, err := e.trust.Verify(sig, manifest, want); err != nil {
		return fmt.Errorf("verify checkpoint image %s: %w", ref, err)
	}
	return nil
}

// verifyStored is verify for a checkpoint image in the store, by the
// signature stored beside it.
func (e *Engine) verifyStored(i *image.Image, x *provenance.Expect) error {
	if e.trust == nil {
		return nil
	}
	var sigImg v1.Image
	sig, err := e.signatureOf(i)
	switch {
	case err == nil:
		if sigImg, err = e.Images.Image(sig); err != nil {
			return err
		}
	case !errors.Is(err, image.ErrNotFound):
		return err
	}
	h, err := v1.NewHash(i.Digest)
	if err != nil {
		return err
	}
	layer, err := e.Images.LayerPath(i)
	if err != nil {
		return err
	}
	return e.verify(i.Name, sigImg, h, blobDigest(layer), x)
}
