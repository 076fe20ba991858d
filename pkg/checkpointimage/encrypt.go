package checkpointimage

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containers/ocicrypt"
	ocicryptconfig "github.com/containers/ocicrypt/config"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Encrypted image layers are the ocicrypt format CRI-O, containerd and
// Podman (--decryption-key) decrypt: the layer AES-encrypted, its key
// wrapped for each recipient (JWE: RSA or EC public keys in PEM), the
// wrapped keys in the layer descriptor's annotations.
const encryptedSuffix = "+encrypted"

// IsEncrypted reports whether a layer media type is an encrypted one.
func IsEncrypted(mt types.MediaType) bool { return strings.HasSuffix(string(mt), encryptedSuffix) }

// Encrypt returns img with its layer encrypted for pubKeys (PEM). The
// encrypted layer is written under dir, which must outlive the image's use.
func Encrypt(img v1.Image, pubKeys [][]byte, dir string) (v1.Image, error) {
	cc, err := ocicryptconfig.EncryptWithJwe(pubKeys)
	if err != nil {
		return nil, fmt.Errorf("encryption keys: %w", err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	if len(m.Layers) != 1 {
		return nil, fmt.Errorf("checkpoint image has %d layers, not one", len(m.Layers))
	}
	ls, err := img.Layers()
	if err != nil {
		return nil, err
	}
	plain := m.Layers[0]
	rc, err := ls[0].Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	enc, finish, err := ocicrypt.EncryptLayer(cc.EncryptConfig, rc, ocispec.Descriptor{
		MediaType: string(plain.MediaType), Digest: digest.Digest(plain.Digest.String()), Size: plain.Size,
	})
	if err != nil {
		return nil, fmt.Errorf("encrypt layer: %w", err)
	}
	f, err := os.CreateTemp(dir, "encrypted-layer-")
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), enc)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("encrypt layer: %w", err)
	}
	ann, err := finish()
	if err != nil {
		return nil, fmt.Errorf("encrypt layer: %w", err)
	}
	diffID, err := ls[0].DiffID()
	if err != nil {
		return nil, err
	}
	mt := types.MediaType(string(plain.MediaType) + encryptedSuffix)
	layer := &encryptedLayer{path: f.Name(), size: n, diffID: diffID, mt: mt,
		digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	out, err := mutate.Append(base, mutate.Addendum{Layer: layer, MediaType: mt, Annotations: ann})
	if err != nil {
		return nil, err
	}
	if out, err = mutate.ConfigFile(out, cfg); err != nil {
		return nil, err
	}
	return mutate.Annotations(out, m.Annotations).(v1.Image), nil
}

// Decrypt writes the plain layer of an encrypted checkpoint image layer
// (the blob at path, described by desc) to dest, with the private keys
// (PEM) given, and checks it is the layer that was encrypted.
func Decrypt(path string, desc v1.Descriptor, privKeys [][]byte, dest string) error {
	if len(privKeys) == 0 {
		return errors.New("the checkpoint image is encrypted: give the private key (--decryption-key)")
	}
	cc, err := ocicryptconfig.DecryptWithPrivKeys(privKeys, make([][]byte, len(privKeys)))
	if err != nil {
		return fmt.Errorf("decryption keys: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, want, err := ocicrypt.DecryptLayer(cc.DecryptConfig, f, ocispec.Descriptor{
		MediaType: string(desc.MediaType), Digest: digest.Digest(desc.Digest.String()), Size: desc.Size,
		Annotations: desc.Annotations,
	}, false)
	if err != nil {
		return fmt.Errorf("the checkpoint image is encrypted and the keys given cannot open it: %w", err)
	}
	out, err := os.OpenFile(dest, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(out, h), r)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("decrypt layer: %w", err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); want != "" && got != want.String() {
		return fmt.Errorf("decrypted layer is %s, the image says %s: damaged or tampered", got, want)
	}
	return nil
}

// encryptedLayer is a layer whose bytes are an encrypted blob on disk.
type encryptedLayer struct {
	path           string
	size           int64
	digest, diffID v1.Hash
	mt             types.MediaType
}

func (l *encryptedLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *encryptedLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *encryptedLayer) Size() (int64, error)                { return l.size, nil }
func (l *encryptedLayer) MediaType() (types.MediaType, error) { return l.mt, nil }
func (l *encryptedLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }
func (l *encryptedLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, errors.New("the layer is encrypted")
}
