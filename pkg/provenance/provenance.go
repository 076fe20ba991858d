// Package provenance says who made a checkpoint image, and whether to
// believe it. A checkpoint is restored as root and CRIU trusts its images,
// so a node admits only checkpoint images signed by the cluster's
// checkpoint key (every agent signs what it makes) or by a key the node
// was told to trust (an admin's, for checkpoints Podman or CRI-O made).
//
// Signatures are in cosign's format, so that cosign and stasis verify each
// other's (`cosign verify --key cluster.pub --insecure-ignore-tlog
// REPO@MANIFEST-DIGEST`; `cosign sign --key` with the transparency log
// off): the signed payload is the "simple signing" JSON of sigstore's
// payload.Cosign naming the image's manifest digest, stored as a separate
// OCI image tagged sha256-<hex>.sig in the image's repository, one layer
// per signature (the payload), the base64 signature in the layer's
// annotation. A checkpoint image stasis pushes sits in an index: cosign
// must be given the manifest's digest (or --recursive), as the signature
// names the manifest.
package provenance

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
)

const (
	// MediaType is the media type of a signature layer (cosign's).
	MediaType types.MediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	// SignatureAnnotation holds a layer's base64 signature (cosign's).
	SignatureAnnotation = "dev.cosignproject.cosign/signature"

	// A signature image is fetched before anything of the checkpoint, from
	// wherever the checkpoint came from: bounded, so a hostile one costs
	// nothing. A payload is a few hundred bytes.
	maxLayerSize = 64 << 10
	maxLayers    = 16
)

var (
	// ErrUnsigned is a checkpoint image with no signature.
	ErrUnsigned = errors.New("is not signed")
	// ErrUntrusted is a checkpoint image signed, but by no key this node
	// trusts.
	ErrUntrusted = errors.New("is signed, but by no key this node trusts")
	// ErrMismatch is a trusted signature whose claims are not what the
	// restore expects (another namespace, container or archive).
	ErrMismatch = errors.New("is signed for another checkpoint")
)

// Claims are what a signature says of the checkpoint, beyond its digest.
// Empty fields are left out of the signature.
type Claims struct {
	Cluster, Namespace, Pod, Container, Node string
	// Time is when the checkpoint was signed.
	Time time.Time
	// Archive is the archive's (the image's layer's) digest.
	Archive string
}

// The keys of Claims in the payload's optional map.
const (
	keyCluster   = "stasis.dev/cluster"
	keyNamespace = "stasis.dev/namespace"
	keyPod       = "stasis.dev/pod"
	keyContainer = "stasis.dev/container"
	keyNode      = "stasis.dev/node"
	keyTime      = "stasis.dev/time"
	keyArchive   = "stasis.dev/archive"
)

// strings are the string claims by key: the one table both directions use.
func (c *Claims) strings() map[string]*string {
	return map[string]*string{
		keyCluster: &c.Cluster, keyNamespace: &c.Namespace, keyPod: &c.Pod, keyContainer: &c.Container,
		keyNode: &c.Node, keyArchive: &c.Archive,
	}
}

func (c Claims) annotations() map[string]interface{} {
	m := map[string]interface{}{}
	for k, v := range c.strings() {
		if *v != "" {
			m[k] = *v
		}
	}
	if !c.Time.IsZero() {
		m[keyTime] = c.Time.UTC().Format(time.RFC3339)
	}
	if len(m) == 0 {
		return nil // "optional": null, as cosign writes no annotations
	}
	return m
}

// claimsOf reads Claims from a payload's optional map; other keys (a
// cosign user's -a annotations) are ignored.
func claimsOf(m map[string]interface{}) (Claims, error) {
	var c Claims
	for k, dst := range c.strings() {
		v, ok := m[k]
		if !ok {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return Claims{}, fmt.Errorf("claim %s is not a string", k)
		}
		*dst = s
	}
	if v, ok := m[keyTime]; ok {
		s, _ := v.(string)
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return Claims{}, fmt.Errorf("claim %s: %q is not an RFC 3339 time", keyTime, v)
		}
		c.Time = t
	}
	return c, nil
}

// SignatureTag is the tag of the signature image of the image whose
// manifest digest is manifest, in the image's repository (cosign's).
func SignatureTag(manifest v1.Hash) string {
	return manifest.Algorithm + "-" + manifest.Hex + ".sig"
}

// IsSignature says whether an image name's tag is a signature's
// (SignatureTag), which image lists show beside its image, not as one.
func IsSignature(name string) bool {
	i := strings.LastIndex(name, ":")
	return i >= 0 && signatureTag.MatchString(name[i+1:])
}

var signatureTag = regexp.MustCompile(`^sha256-[0-9a-f]{64}\.sig$`)

// Sign makes the signature image of the image with manifest digest
// manifest in repository (the payload's docker-reference): one layer,
// the payload with c, signed by signer.
func Sign(signer signature.Signer, repository string, manifest v1.Hash, c Claims) (v1.Image, error) {
	repo, err := name.NewRepository(repository)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	p, err := json.Marshal(payload.Cosign{Image: repo.Digest(manifest.String()), Annotations: c.annotations()})
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	sig, err := signer.SignMessage(bytes.NewReader(p))
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	// cosign's empty signature image (pkg/oci/empty) and its layer
	// (pkg/oci/static): OCI media types, the payload as the layer.
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:       static.NewLayer(p, MediaType),
		Annotations: map[string]string{SignatureAnnotation: base64.StdEncoding.EncodeToString(sig)},
	})
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return img, nil
}

// Trust is the keys a node believes: the cluster's checkpoint key, and
// keys trusted besides it (whose signers vouch for checkpoints made
// elsewhere).
type Trust struct {
	keys []key
}

type key struct {
	name    string // the file it came from
	cluster bool
	v       signature.Verifier
}

// LoadTrust reads the cluster's key ("": none) and the trusted keys from
// PEM files. Each is a public key, or a private key whose public half is
// meant (an agent holds only its signing key).
func LoadTrust(clusterKeyFile string, trustedKeyFiles []string) (*Trust, error) {
	t := &Trust{}
	if clusterKeyFile != "" {
		v, err := loadVerifier(clusterKeyFile)
		if err != nil {
			return nil, err
		}
		t.keys = append(t.keys, key{name: clusterKeyFile, cluster: true, v: v})
	}
	for _, f := range trustedKeyFiles {
		v, err := loadVerifier(f)
		if err != nil {
			return nil, err
		}
		t.keys = append(t.keys, key{name: f, v: v})
	}
	if len(t.keys) == 0 {
		return nil, errors.New("trust: no keys")
	}
	return t, nil
}

// Verified is a signature a node believes.
type Verified struct {
	// Key names the key that made it (its file).
	Key string
	// Cluster is set when that is the cluster's checkpoint key.
	Cluster bool
	Claims  Claims
}

// Bounded returns a signature image's manifest if the image is small
// enough to read and store: the whole image is bounded, not only the layers
// Verify reads, since a node stores it as it came, with trust or without.
func Bounded(sig v1.Image) (*v1.Manifest, error) {
	m, err := sig.Manifest()
	if err != nil {
		return nil, fmt.Errorf("signature image: %w", err)
	}
	if len(m.Layers) > maxLayers {
		return nil, fmt.Errorf("signature image has %d layers, more than %d", len(m.Layers), maxLayers)
	}
	if m.Config.Size > maxLayerSize {
		return nil, fmt.Errorf("signature image has a config of %d bytes, more than %d", m.Config.Size, maxLayerSize)
	}
	for _, d := range m.Layers {
		if d.Size > maxLayerSize {
			return nil, fmt.Errorf("signature layer %s has %d bytes, more than %d", d.Digest, d.Size, maxLayerSize)
		}
	}
	return m, nil
}

// Verify finds in sig (the signature image; nil when there is none) a
// signature of the image with manifest digest manifest by a key t
// trusts whose claims x admits (Check): the first such in layer order.
// Only layers of cosign's media type are read. As cosign does, a layer
// that cannot be read (no or bad base64 signature, content not matching
// its digest, more bytes than it says) is skipped, as is one signed by
// no trusted key, or whose claims x refuses: whoever may push the
// signature tag may add layers, which must not hide a good one. A
// signature image of more than 16 layers, or with a layer or config over
// 64 KiB, is refused as a whole.
//
// When no layer passes, the error is the most telling: ErrMismatch (the
// first trusted signature's reason) when a trusted key signed, else the
// first trusted payload that could not be read, else ErrUntrusted when a
// layer was signed, else ErrUnsigned; the last two say why layers were
// skipped, if any were.
func (t *Trust) Verify(sig v1.Image, manifest v1.Hash, x Expect) (*Verified, error) {
	if sig == nil {
		return nil, ErrUnsigned
	}
	m, err := Bounded(sig)
	if err != nil {
		return nil, err
	}
	var (
		mismatch, badPayload, malformed error // the first of each
		skipped                         int   // malformed layers
		signed                          bool  // a layer read, signed by no trusted key
	)
	first := func(dst *error, err error) {
		if *dst == nil {
			*dst = err
		}
	}
	for _, d := range m.Layers {
		if d.MediaType != MediaType {
			continue
		}
		p, s, err := readSignature(sig, d)
		if err != nil {
			skipped++
			first(&malformed, err)
			continue
		}
		k := t.signer(p, s)
		if k == nil {
			signed = true
			continue
		}
		v, err := k.claims(p, manifest)
		if err == nil {
			err = v.Check(x)
		}
		switch {
		case err == nil:
			return v, nil
		case errors.Is(err, ErrMismatch):
			first(&mismatch, err) // another checkpoint's, or replayed from another image
		default:
			first(&badPayload, err)
		}
	}
	switch {
	case mismatch != nil:
		return nil, mismatch
	case badPayload != nil:
		return nil, badPayload
	}
	base := ErrUnsigned
	if signed {
		base = ErrUntrusted
	}
	if malformed != nil {
		return nil, fmt.Errorf("%w (%d signature layers skipped; the first: %w)", base, skipped, malformed)
	}
	return nil, base
}

// readSignature reads a layer's payload and decodes its signature.
func readSignature(sig v1.Image, d v1.Descriptor) (p, s []byte, err error) {
	a, ok := d.Annotations[SignatureAnnotation]
	if !ok || a == "" {
		return nil, nil, fmt.Errorf("signature layer %s: no annotation %s", d.Digest, SignatureAnnotation)
	}
	s, err = base64.StdEncoding.DecodeString(a)
	if err != nil {
		return nil, nil, fmt.Errorf("signature layer %s: annotation %s: %w", d.Digest, SignatureAnnotation, err)
	}
	l, err := sig.LayerByDigest(d.Digest)
	if err != nil {
		return nil, nil, fmt.Errorf("signature layer %s: %w", d.Digest, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, nil, fmt.Errorf("signature layer %s: %w", d.Digest, err)
	}
	defer rc.Close()
	p, err = io.ReadAll(io.LimitReader(rc, maxLayerSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("signature layer %s: %w", d.Digest, err)
	}
	if len(p) > maxLayerSize {
		return nil, nil, fmt.Errorf("signature layer %s has more than %d bytes", d.Digest, maxLayerSize)
	}
	// A layer from a store is not checked as it is read; one from a
	// registry is, but only at its end.
	sum := sha256.Sum256(p)
	if d.Digest.Algorithm != "sha256" || hex.EncodeToString(sum[:]) != d.Digest.Hex {
		return nil, nil, fmt.Errorf("signature layer %s: content does not match its digest", d.Digest)
	}
	return p, s, nil
}

// signer is the key that signed payload p with s, if t trusts it.
func (t *Trust) signer(p, s []byte) *key {
	for i := range t.keys {
		if t.keys[i].v.VerifySignature(bytes.NewReader(s), bytes.NewReader(p)) == nil {
			return &t.keys[i]
		}
	}
	return nil
}

// claims reads a verified payload: cosign's type, naming manifest.
func (k *key) claims(p []byte, manifest v1.Hash) (*Verified, error) {
	var sc payload.SimpleContainerImage
	if err := json.Unmarshal(p, &sc); err != nil {
		return nil, fmt.Errorf("signature payload (key %s): %w", k.name, err)
	}
	if sc.Critical.Type != payload.CosignSignatureType {
		return nil, fmt.Errorf("signature payload (key %s) is of type %q, not cosign's", k.name, sc.Critical.Type)
	}
	if got := sc.Critical.Image.DockerManifestDigest; got != manifest.String() {
		return nil, fmt.Errorf("%w: the signature names manifest %s, not %s (key %s)", ErrMismatch, got, manifest, k.name)
	}
	c, err := claimsOf(sc.Optional)
	if err != nil {
		return nil, fmt.Errorf("signature payload (key %s): %w", k.name, err)
	}
	return &Verified{Key: k.name, Cluster: k.cluster, Claims: c}, nil
}

// Expect is what a restore knows the checkpoint must be. Its zero value
// expects a checkpoint of no namespace, which the cluster's key never
// signs: a read that restores into no namespace says Anything.
type Expect struct {
	// Namespace is the namespace restored into.
	Namespace string
	// Container and Archive (the archive's digest), when set, must match.
	Container, Archive string
	// anything is Anything's.
	anything bool
}

// Anything is the Expect of a read that is no restore into a namespace
// (a pull, the CLI's restore on its own node): any signature of the
// image by a trusted key admits it, whatever its claims.
var Anything = Expect{anything: true}

// Check admits v for x. The cluster's key signs every checkpoint of the
// cluster, so its signature must name exactly x's namespace (one
// namespace's checkpoint is not another's to restore), and x's container
// and archive when x sets them. A trusted key's signer decides what its
// signature binds: what its claims name must match, what they leave out
// is admitted. Anything admits every v.
func (v *Verified) Check(x Expect) error {
	if x.anything {
		return nil
	}
	c := v.Claims
	if v.Cluster && c.Namespace == "" {
		// Not only a namespace of "": Expect's zero value must not admit
		// a signature the cluster's agents never make.
		return fmt.Errorf("%w: the cluster's signature names no namespace (key %s)", ErrMismatch, v.Key)
	}
	if v.Cluster || c.Namespace != "" {
		if c.Namespace != x.Namespace {
			return fmt.Errorf("%w: namespace %q, not %q (key %s)", ErrMismatch, c.Namespace, x.Namespace, v.Key)
		}
	}
	for _, f := range []struct{ what, claim, want string }{
		{"container", c.Container, x.Container}, {"archive", c.Archive, x.Archive},
	} {
		if f.want == "" || (!v.Cluster && f.claim == "") {
			continue
		}
		if f.claim != f.want {
			return fmt.Errorf("%w: %s %q, not %q (key %s)", ErrMismatch, f.what, f.claim, f.want, v.Key)
		}
	}
	return nil
}
