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
		v, err := trust(t, k).Verify(sig, manifest, Expect{Namespace: "shop", Container: "app", Archive: claims().Archive})
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
	// A trusted signature that names nothing admits any expectation.
	v, err := trust(t, cluster, pub).Verify(sig, manifest, Expect{Namespace: "anywhere", Container: "c", Archive: "sha256:00"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Cluster || v.Key != pub || v.Claims != (Claims{}) {
		t.Fatalf("verified %+v", v)
	}
}

// payloadOf is the first layer's content of a signature image.
func payloadOf(t *testing.T, img v1.Image) []byte {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	l, err := img.LayerByDigest(m.Layers[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var b bytes.Buffer
	b.ReadFrom(rc)
	return b.Bytes()
}

// signed is the one layer of a signature of manifest with claims c by
// the key in file priv.
func signed(t *testing.T, priv string, manifest v1.Hash, c Claims) layer {
	t.Helper()
	img, err := Sign(signer(t, priv), "r.example/c", manifest, c)
	if err != nil {
		t.Fatal(err)
	}
	return layer{payloadOf(t, img), annotationOf(img)}
}

// signedPayload is a layer of payload p as the key in file priv signs it.
func signedPayload(t *testing.T, priv string, p []byte) layer {
	t.Helper()
	s, err := signer(t, priv).SignMessage(bytes.NewReader(p))
	if err != nil {
		t.Fatal(err)
	}
	return layer{p, base64.StdEncoding.EncodeToString(s)}
}

func TestRefused(t *testing.T) {
	priv, pub := keyFiles(t, "cluster")
	otherPriv, _ := keyFiles(t, "other")
	tr := trust(t, pub)
	shop := Expect{Namespace: "shop"}
	good := signed(t, priv, manifest, claims())
	tampered := layer{bytes.Replace(good.payload, []byte(`"shop"`), []byte(`"evil"`), 1), good.sig}
	foreign := signed(t, otherPriv, manifest, claims())
	other := manifest
	other.Hex = strings.Repeat("ef", 32)
	replayed := signed(t, priv, other, claims())
	c := claims()
	c.Namespace = "dev"
	elsewhere := signed(t, priv, manifest, c)
	badBase64 := layer{good.payload, "%%%"}
	noAnnotation := layer{good.payload, ""}
	garbage := signedPayload(t, priv, []byte("not json"))
	// A payload signed by the trusted key, as good's but changed by edit.
	edited := func(edit func(*payload.SimpleContainerImage)) layer {
		t.Helper()
		var sc payload.SimpleContainerImage
		if err := json.Unmarshal(good.payload, &sc); err != nil {
			t.Fatal(err)
		}
		edit(&sc)
		p, err := json.Marshal(sc)
		if err != nil {
			t.Fatal(err)
		}
		return signedPayload(t, priv, p)
	}
	nonString := edited(func(sc *payload.SimpleContainerImage) { sc.Optional["stasis.dev/namespace"] = []string{"shop"} })
	numberContainer := edited(func(sc *payload.SimpleContainerImage) { sc.Optional["stasis.dev/container"] = 7 })
	badTime := edited(func(sc *payload.SimpleContainerImage) { sc.Optional["stasis.dev/time"] = "yesterday" })
	numberTime := edited(func(sc *payload.SimpleContainerImage) { sc.Optional["stasis.dev/time"] = 1777636800 })
	notCosign := edited(func(sc *payload.SimpleContainerImage) { sc.Critical.Type = "atomic container signature" })
	noType := edited(func(sc *payload.SimpleContainerImage) { sc.Critical.Type = "" })
	big := sigImage(t, layer{bytes.Repeat([]byte("x"), maxLayerSize+1), good.sig})
	bigConfig, err := mutate.Config(sigImage(t, good), v1.Config{Env: []string{strings.Repeat("x", maxLayerSize)}})
	if err != nil {
		t.Fatal(err)
	}
	var many []layer
	for range maxLayers + 1 {
		many = append(many, good)
	}
	// A good layer among many: the limits refuse the whole image.
	bigAmongGood := sigImage(t, good, layer{bytes.Repeat([]byte("x"), maxLayerSize+1), good.sig})
	for _, c := range []struct {
		name string
		sig  v1.Image
		want error
		msg  string
	}{
		{"unsigned", nil, ErrUnsigned, ""},
		{"no signature layers", empty.Image, ErrUnsigned, ""},
		{"tampered payload", sigImage(t, tampered), ErrUntrusted, ""},
		{"untrusted key", sigImage(t, foreign), ErrUntrusted, ""},
		{"wrong manifest", sigImage(t, replayed), ErrMismatch, "names manifest"},
		{"another namespace", sigImage(t, elsewhere), ErrMismatch, `namespace "dev", not "shop"`},
		{"bad base64", sigImage(t, badBase64), ErrUnsigned, "illegal base64"},
		{"no annotation", sigImage(t, noAnnotation), ErrUnsigned, "no annotation"},
		{"garbage payload", sigImage(t, garbage), nil, "signature payload"},
		{"claim not a string", sigImage(t, nonString), nil, "claim stasis.dev/namespace is not a string"},
		{"container claim a number", sigImage(t, numberContainer), nil, "claim stasis.dev/container is not a string"},
		{"bad time", sigImage(t, badTime), nil, `claim stasis.dev/time: "yesterday" is not an RFC 3339 time`},
		{"time a number", sigImage(t, numberTime), nil, "claim stasis.dev/time:"},
		{"payload not cosign's type", sigImage(t, notCosign), nil, `of type "atomic container signature", not cosign's`},
		{"payload of no type", sigImage(t, noType), nil, `of type "", not cosign's`},
		{"layer too big", big, nil, "more than 65536"},
		{"layer too big after a good one", bigAmongGood, nil, "more than 65536"},
		{"too many layers", sigImage(t, many...), nil, "17 layers"},
		{"config too big", bigConfig, nil, "a config of"},
		// The most telling reason when no layer passes: a trusted
		// signature's mismatch, then a trusted key's unreadable payload,
		// then a signature by no trusted key, then none (saying why
		// layers were skipped).
		{"malformed, untrusted, mismatch", sigImage(t, badBase64, foreign, elsewhere, replayed), ErrMismatch, `namespace "dev"`},
		{"garbage, mismatch", sigImage(t, garbage, elsewhere), ErrMismatch, `namespace "dev"`},
		{"untrusted, garbage", sigImage(t, foreign, garbage), nil, "signature payload"},
		{"malformed, untrusted", sigImage(t, badBase64, foreign), ErrUntrusted, "1 signature layers skipped; the first: signature layer"},
		{"malformed, malformed", sigImage(t, noAnnotation, badBase64), ErrUnsigned, "2 signature layers skipped; the first: signature layer"},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, err := tr.Verify(c.sig, manifest, shop)
			if err == nil {
				t.Fatalf("verified %+v", v)
			}
			if c.want != nil && !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("error %v, want %v %q", err, c.want, c.msg)
			}
			for _, e := range []error{ErrUnsigned, ErrUntrusted, ErrMismatch} {
				if e != c.want && errors.Is(err, e) {
					t.Fatalf("error %v is also %v", err, e)
				}
			}
		})
	}
	// The edits alone refuse those payloads: unedited, one verifies.
	if v, err := tr.Verify(sigImage(t, edited(func(*payload.SimpleContainerImage) {})), manifest, shop); err != nil || v.Claims != claims() {
		t.Fatalf("an unedited payload: %+v, %v", v, err)
	}
	// Whatever layers come before it, a good signature is found:
	// cosign skips what it cannot read, and anyone who may push the
	// signature tag may add layers.
	for name, before := range map[string][]layer{
		"foreign":       {foreign},
		"bad base64":    {badBase64},
		"no annotation": {noAnnotation},
		"tampered":      {tampered},
		"replayed":      {replayed},
		"garbage":       {garbage},
		"elsewhere":     {elsewhere},
		"all":           {badBase64, foreign, garbage, tampered, replayed, elsewhere, noAnnotation},
		"bad claims":    {nonString, numberContainer, badTime, numberTime, notCosign, noType},
	} {
		v, err := tr.Verify(sigImage(t, append(before, good)...), manifest, shop)
		if err != nil {
			t.Fatalf("a good signature after %s: %v", name, err)
		}
		if v.Claims != claims() {
			t.Fatalf("after %s, verified %+v", name, v)
		}
	}
}

// Of several trusted signatures, the first whose claims the expectation
// admits is the one.
func TestFirstThatPasses(t *testing.T) {
	priv, pub := keyFiles(t, "cluster")
	adminPriv, adminPub := keyFiles(t, "admin")
	tr := trust(t, pub, adminPub)
	in := func(ns string) layer { return signed(t, priv, manifest, Claims{Namespace: ns, Container: "app"}) }
	sig := sigImage(t, in("ga"), in("gb"))
	for _, c := range []struct {
		x      Expect
		ns     string
		errMsg string
	}{
		{Expect{Namespace: "ga"}, "ga", ""},
		{Expect{Namespace: "gb"}, "gb", ""},
		{Expect{Namespace: "gb", Container: "app"}, "gb", ""},
		{Anything, "ga", ""},
		{Expect{Namespace: "gc"}, "", `namespace "ga", not "gc"`},
		{Expect{Namespace: "gb", Container: "db"}, "", `namespace "ga", not "gb"`},
	} {
		v, err := tr.Verify(sig, manifest, c.x)
		if c.errMsg != "" {
			if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), c.errMsg) {
				t.Errorf("Verify(%+v) = %+v, %v; want %q", c.x, v, err, c.errMsg)
			}
			continue
		}
		if err != nil || v.Claims.Namespace != c.ns || v.Key != pub {
			t.Errorf("Verify(%+v) = %+v, %v; want namespace %s", c.x, v, err, c.ns)
		}
	}
	// A trusted signature for gb only, expecting ga.
	if _, err := tr.Verify(sigImage(t, in("gb")), manifest, Expect{Namespace: "ga"}); !errors.Is(err, ErrMismatch) ||
		!strings.Contains(err.Error(), `namespace "gb", not "ga"`) {
		t.Errorf("gb for ga: %v", err)
	}
	// An admin's signature after the cluster's: found by its key.
	admin := signed(t, adminPriv, manifest, Claims{Namespace: "gd"})
	v, err := tr.Verify(sigImage(t, in("ga"), admin), manifest, Expect{Namespace: "gd", Container: "any"})
	if err != nil || v.Key != adminPub || v.Cluster {
		t.Errorf("the admin's signature: %+v, %v", v, err)
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
		// A trusted key's claims that name no namespace still bind what
		// they do name.
		{&Verified{Key: "admin.pub", Claims: Claims{Container: "app"}}, Expect{Namespace: "shop", Container: "db"}, true},
		{&Verified{Key: "admin.pub", Claims: Claims{Archive: c.Archive}}, Expect{Namespace: "shop", Archive: "sha256:00"}, true},
		// The cluster's signature naming no namespace is no namespace's.
		{&Verified{Key: "cluster.pub", Cluster: true}, Expect{Namespace: "shop"}, true},
		// Nor does Expect's zero value admit it: a restore always has a
		// namespace, and only Anything asks for none.
		{&Verified{Key: "cluster.pub", Cluster: true}, Expect{}, true},
		{&Verified{Key: "cluster.pub", Cluster: true}, Anything, false},
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
	if _, err := trust(t, pub).Verify(img, manifest, Anything); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("an image of no signature layers: %v", err)
	}
}

// A layer rewritten where it is stored (an OCI layout, as the node's
// image store) is skipped even though the layout reads it as it is, as
// is one grown past the bound: the signature after it is found, and
// without one the image is unsigned, saying why.
func TestRewrittenLayer(t *testing.T) {
	priv, pub := keyFiles(t, "cluster")
	c := claims()
	c.Container = "second"
	for _, rewrite := range []struct {
		name string
		f    func([]byte) []byte
		msg  string
	}{
		{"rewritten", func(b []byte) []byte { return bytes.Replace(b, []byte("shop"), []byte("evil"), 1) }, "does not match its digest"},
		{"grown", func(b []byte) []byte { return append(b, bytes.Repeat([]byte(" "), maxLayerSize)...) }, "more than 65536 bytes"},
	} {
		for _, ls := range [][]layer{
			{signed(t, priv, manifest, claims())},
			{signed(t, priv, manifest, claims()), signed(t, priv, manifest, c)},
		} {
			sig := sigImage(t, ls...)
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
			os.WriteFile(blob, rewrite.f(b), 0o600)
			h, _ := sig.Digest()
			stored, err := p.Image(h)
			if err != nil {
				t.Fatal(err)
			}
			v, err := trust(t, pub).Verify(stored, manifest, Expect{Namespace: "shop"})
			if len(ls) == 1 {
				if !errors.Is(err, ErrUnsigned) || !strings.Contains(err.Error(), rewrite.msg) {
					t.Fatalf("a %s layer: %v", rewrite.name, err)
				}
				continue
			}
			if err != nil || v.Claims.Container != "second" {
				t.Fatalf("a good layer after a %s one: %+v, %v", rewrite.name, v, err)
			}
		}
	}
}
