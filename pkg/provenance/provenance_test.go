package provenance

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
)

// keyFiles writes a fresh key pair as PREFIX.key and PREFIX.pub.
func keyFiles(t *testing.T, prefix string) (priv, pub string) {
	t.Helper()
	k, p, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	priv, pub = filepath.Join(t.TempDir(), prefix+".key"), filepath.Join(t.TempDir(), prefix+".pub")
	if err := os.WriteFile(priv, k, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pub, p, 0o644); err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

func signer(t *testing.T, file string) signature.Signer {
	t.Helper()
	s, err := LoadSigner(file)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func trust(t *testing.T, cluster string, trusted ...string) *Trust {
	t.Helper()
	tr, err := LoadTrust(cluster, trusted)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

var manifest = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}

func claims() Claims {
	return Claims{Cluster: "prod", Namespace: "shop", Pod: "web-0", Container: "app", Node: "n1",
		Time: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC), Archive: "sha256:" + strings.Repeat("cd", 32)}
}

func TestSignVerify(t *testing.T) {
	priv, pub := keyFiles(t, "cluster")
	sig, err := Sign(signer(t, priv), "registry.example/ckpt/web", manifest, claims())
	if err != nil {
		t.Fatal(err)
	}
	// The public half or the signing key itself (an agent's) verify alike.
	for _, k := range []string{pub, priv} {
		v, err := trust(t, k).Verify(sig, manifest)
		if err != nil {
			t.Fatal(err)
		}
		if !v.Cluster || v.Key != k || v.Claims != claims() {
			t.Fatalf("verified %+v", v)
		}
	}
	// cosign's layout: the tag, one layer of its media type, the payload
	// JSON with the digest and type cosign checks.
	if got := SignatureTag(manifest); got != "sha256-"+manifest.Hex+".sig" {
		t.Fatalf("tag %s", got)
	}
	m, _ := sig.Manifest()
	if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON || len(m.Layers) != 1 ||
		m.Layers[0].MediaType != MediaType || m.Layers[0].Annotations[SignatureAnnotation] == "" {
		t.Fatalf("signature manifest %+v", m)
	}
	l, _ := sig.LayerByDigest(m.Layers[0].Digest)
	rc, _ := l.Compressed()
	var p payload.SimpleContainerImage
	if err := json.NewDecoder(rc).Decode(&p); err != nil {
		t.Fatal(err)
	}
	if p.Critical.Type != payload.CosignSignatureType || p.Critical.Image.DockerManifestDigest != manifest.String() ||
		p.Critical.Identity.DockerReference != "registry.example/ckpt/web" || p.Optional["stasis.dev/namespace"] != "shop" ||
		p.Optional["stasis.dev/time"] != "2026-05-01T12:00:00Z" {
		t.Fatalf("payload %+v", p)
	}
}

// A signature made as `cosign sign --key` makes it (its own static
// layer, no stasis claims) verifies with a trusted key.
func TestCosignSignature(t *testing.T) {
	priv, pub := keyFiles(t, "admin")
	p, _ := json.Marshal(payload.Cosign{Image: mustDigest(t, "quay.example/podman/ckpt@"+manifest.String())})
	s, err := signer(t, priv).SignMessage(bytes.NewReader(p))
	if err != nil {
		t.Fatal(err)
	}
	sig := sigImage(t, layer{p, base64.StdEncoding.EncodeToString(s)})
	_, cluster := keyFiles(t, "cluster")
	v, err := trust(t, cluster, pub).Verify(sig, manifest)
	if err != nil {
		t.Fatal(err)
	}
	if v.Cluster || v.Key != pub || v.Claims != (Claims{}) {
		t.Fatalf("verified %+v", v)
	}
	if err := v.Check(Expect{Namespace: "anywhere", Container: "c", Archive: "sha256:00"}); err != nil {
		t.Fatalf("a trusted signature that names nothing: %v", err)
	}
}

func TestRefused(t *testing.T) {
	priv, pub := keyFiles(t, "cluster")
	otherPriv, _ := keyFiles(t, "other")
	tr := trust(t, pub)
	good, err := Sign(signer(t, priv), "r.example/c", manifest, claims())
	if err != nil {
		t.Fatal(err)
	}
	m, _ := good.Manifest()
	payloadOf := func(img v1.Image) []byte {
		mm, _ := img.Manifest()
		l, _ := img.LayerByDigest(mm.Layers[0].Digest)
		rc, _ := l.Compressed()
		defer rc.Close()
		var b bytes.Buffer
		b.ReadFrom(rc)
		return b.Bytes()
	}
	goodSig := m.Layers[0].Annotations[SignatureAnnotation]
	tampered := bytes.Replace(payloadOf(good), []byte(`"shop"`), []byte(`"evil"`), 1)
	foreign, _ := Sign(signer(t, otherPriv), "r.example/c", manifest, claims())
	other := manifest
	other.Hex = strings.Repeat("ef", 32)
	replayed, _ := Sign(signer(t, priv), "r.example/c", other, claims())
	big := sigImage(t, layer{bytes.Repeat([]byte("x"), maxLayerSize+1), goodSig})
	bigConfig, err := mutate.Config(sigImage(t, layer{payloadOf(good), goodSig}), v1.Config{Env: []string{strings.Repeat("x", maxLayerSize)}})
	if err != nil {
		t.Fatal(err)
	}
	var many []layer
	for range maxLayers + 1 {
		many = append(many, layer{payloadOf(good), goodSig})
	}
	for _, c := range []struct {
		name string
		sig  v1.Image
		want error
		msg  string
	}{
		{"unsigned", nil, ErrUnsigned, ""},
		{"no signature layers", empty.Image, ErrUnsigned, ""},
		{"tampered payload", sigImage(t, layer{tampered, goodSig}), ErrUntrusted, ""},
		{"untrusted key", foreign, ErrUntrusted, ""},
		{"wrong digest", replayed, ErrMismatch, "names manifest"},
		{"layer too big", big, nil, "more than 65536"},
		{"too many layers", sigImage(t, many...), nil, "17 layers"},
		{"config too big", bigConfig, nil, "a config of"},
		{"bad base64", sigImage(t, layer{payloadOf(good), "%%%"}), nil, "annotation"},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, err := tr.Verify(c.sig, manifest)
			if err == nil {
				t.Fatalf("verified %+v", v)
			}
			if c.want != nil && !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("error %v, want %v %q", err, c.want, c.msg)
			}
		})
	}
	// A good signature after a foreign one is found.
	if _, err := tr.Verify(sigImage(t, layer{payloadOf(foreign), annotationOf(foreign)}, layer{payloadOf(good), goodSig}), manifest); err != nil {
		t.Fatal(err)
	}
}

func TestCheck(t *testing.T) {
	c := claims()
	cluster := &Verified{Key: "cluster.pub", Cluster: true, Claims: c}
	trusted := &Verified{Key: "admin.pub", Claims: Claims{Namespace: "shop"}}
	for _, x := range []struct {
		v    *Verified
		exp  Expect
		fail bool
	}{
		{cluster, Expect{Namespace: "shop"}, false},
		{cluster, Expect{Namespace: "shop", Container: "app", Archive: c.Archive}, false},
		{cluster, Expect{Namespace: "other"}, true},
		{cluster, Expect{}, true},
		{cluster, Expect{Namespace: "shop", Container: "db"}, true},
		{cluster, Expect{Namespace: "shop", Archive: "sha256:00"}, true},
		{&Verified{Cluster: true, Claims: Claims{Namespace: "shop"}}, Expect{Namespace: "shop", Container: "app"}, true},
		{trusted, Expect{Namespace: "shop", Container: "any", Archive: "sha256:00"}, false},
		{trusted, Expect{Namespace: "other"}, true},
	} {
		err := x.v.Check(x.exp)
		if (err != nil) != x.fail || err != nil && !errors.Is(err, ErrMismatch) {
			t.Errorf("%+v Check(%+v) = %v", x.v, x.exp, err)
		}
	}
}

func TestKeys(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("not a key"), 0o600)
	if _, err := LoadTrust(junk, nil); err == nil {
		t.Fatal("junk loaded as a key")
	}
	if _, err := LoadSigner(junk); err == nil {
		t.Fatal("junk loaded as a signing key")
	}
	if _, err := LoadTrust("", nil); err == nil {
		t.Fatal("a trust of no keys")
	}
	enc := filepath.Join(dir, "cosign.key")
	os.WriteFile(enc, []byte("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"), 0o600)
	if _, err := LoadSigner(enc); err == nil || !strings.Contains(err.Error(), "encrypted") {
		t.Fatalf("an encrypted key: %v", err)
	}
	k, _, err := GenerateKey()
	if err != nil || !bytes.HasPrefix(k, []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Fatalf("generated %q, %v", k, err)
	}
}

type layer struct {
	payload []byte
	sig     string
}

// sigImage makes a signature image as cosign does, of any layers.
func sigImage(t *testing.T, ls ...layer) v1.Image {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for _, l := range ls {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(l.payload, MediaType),
			Annotations: map[string]string{SignatureAnnotation: l.sig}})
		if err != nil {
			t.Fatal(err)
		}
	}
	return img
}

func annotationOf(img v1.Image) string {
	m, _ := img.Manifest()
	return m.Layers[0].Annotations[SignatureAnnotation]
}

func mustDigest(t *testing.T, s string) name.Digest {
	t.Helper()
	d, err := name.NewDigest(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// An image of another media type is not a signature: random's layers.
func TestOtherLayersIgnored(t *testing.T) {
	_, pub := keyFiles(t, "cluster")
	img, err := random.Image(64, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := trust(t, pub).Verify(img, manifest); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("an image of no signature layers: %v", err)
	}
}

// A layer rewritten where it is stored (an OCI layout, as the node's
// image store) is refused even though the layout reads it as it is.
func TestRewrittenLayer(t *testing.T) {
	priv, pub := keyFiles(t, "cluster")
	sig, err := Sign(signer(t, priv), "r.example/c", manifest, claims())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(sig); err != nil {
		t.Fatal(err)
	}
	m, _ := sig.Manifest()
	blob := filepath.Join(dir, "blobs", "sha256", m.Layers[0].Digest.Hex)
	b, _ := os.ReadFile(blob)
	os.WriteFile(blob, bytes.Replace(b, []byte("shop"), []byte("evil"), 1), 0o600)
	h, _ := sig.Digest()
	stored, err := p.Image(h)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := trust(t, pub).Verify(stored, manifest); err == nil || !strings.Contains(err.Error(), "does not match its digest") {
		t.Fatalf("a rewritten layer: %v", err)
	}
}
