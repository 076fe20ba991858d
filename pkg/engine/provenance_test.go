package engine

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/store"
)

type keys struct {
	signer signature.Signer
	trust  *provenance.Trust
}

func newKeys(t *testing.T) keys {
	t.Helper()
	priv, pub, err := provenance.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "k.key"), priv, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "k.pub"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := provenance.LoadSigner(filepath.Join(dir, "k.key"))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := provenance.LoadTrust(filepath.Join(dir, "k.pub"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return keys{s, tr}
}

// engines are two engines on one root: one that verifies nothing (the
// CLI's), one with trust (a node's).
func engines(t *testing.T, trust *provenance.Trust) (plain, trusting *Engine) {
	t.Helper()
	root, run := t.TempDir(), t.TempDir()
	var err error
	if plain, err = New(Options{Root: root, RunRoot: run}); err != nil {
		t.Fatal(err)
	}
	if trusting, err = New(Options{Root: root, RunRoot: run, Trust: trust}); err != nil {
		t.Fatal(err)
	}
	return plain, trusting
}

func TestResolveVerifies(t *testing.T) {
	k := newKeys(t)
	plain, trusting := engines(t, k.trust)
	ctx := context.Background()
	path := restoreArchive(t, nil, nil)
	const signed, unsigned = "reg.example/ckpt/web:signed", "reg.example/ckpt/web:unsigned"
	for _, ref := range []string{signed, unsigned} {
		if _, err := plain.BuildCheckpointImage(path, ref, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := plain.SignImage(signed, k.signer, provenance.Claims{Namespace: "shop", Container: "app", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	ent, err := plain.Checkpoints.Put(store.Entry{ContainerID: "c1", ContainerName: "web", Created: time.Now()}, "checkpoint.tar.zst",
		func(dest string) (store.Written, error) {
			b, err := os.ReadFile(path)
			return store.Written{Size: int64(len(b))}, errors.Join(err, os.WriteFile(dest, b, 0o600))
		})
	if err != nil {
		t.Fatal(err)
	}
	// A container with no checkpoint: its record is all the engine knows
	// of it (Get asks the runtime only for its status).
	api := &Container{ID: "0123456789abcdef", Name: "api", Image: "reg.example/api:1", Created: time.Now()}
	if err := os.MkdirAll(plain.paths(api.ID).dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := plain.save(api); err != nil {
		t.Fatal(err)
	}
	if c, err := plain.Get(ctx, "api"); err != nil || c.ID != api.ID {
		t.Fatalf("the container record: %+v, %v", c, err)
	}

	for _, c := range []struct {
		name string
		e    *Engine
		ref  string
		// file is Ref.File; signed asks for Signed on the plain engine too
		// (the trusting engine always asks for it).
		file   string
		signed bool
		x      provenance.Expect
		want   error
		msg    string
	}{
		{"signed", trusting, signed, "", false, provenance.Expect{Namespace: "shop", Container: "app"}, nil, ""},
		{"no trust, unsigned", plain, unsigned, "", false, provenance.Expect{}, nil, ""},
		{"no trust, a container's stored checkpoint", plain, "web", "", false, provenance.Expect{}, nil, ""},
		{"unsigned", trusting, unsigned, "", false, provenance.Expect{Namespace: "shop"}, provenance.ErrUnsigned, ""},
		{"another namespace", trusting, signed, "", false, provenance.Expect{Namespace: "other"}, provenance.ErrMismatch, "namespace"},
		{"another container", trusting, signed, "", false, provenance.Expect{Namespace: "shop", Container: "db"}, provenance.ErrMismatch, "container"},
		{"stored checkpoint", trusting, ent.ID, "", false, provenance.Expect{Namespace: "shop"}, nil, "names a stored checkpoint"},
		{"container name", trusting, "web", "", false, provenance.Expect{Namespace: "shop"}, nil, "names a container's stored checkpoints"},
		{"container", trusting, "api", "", false, provenance.Expect{Namespace: "shop"}, nil, "names a container,"},
		{"archive file", trusting, "", path, false, provenance.Expect{Namespace: "shop"}, nil, "archive file " + path},
		{"no trust, signed asked", plain, signed, "", true, provenance.Expect{Namespace: "shop", Container: "app"}, nil, "no key to verify it with"},
	} {
		t.Run(c.name, func(t *testing.T) {
			src, err := c.e.resolve(ctx, Ref{Name: c.ref, File: c.file, Expect: &c.x, Signed: c.e == trusting || c.signed})
			if err == nil {
				var ck *unpacked
				if ck, err = c.e.unpack(ctx, src, t.TempDir(), false); err == nil {
					ck.close()
				}
			}
			if c.want == nil && c.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("resolved")
			}
			if c.want != nil && !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("error %v, want %v %q", err, c.want, c.msg)
			}
		})
	}
}

// The signature goes up with Push beside the index Push wraps around the
// manifest, and comes back with Pull, still naming the manifest; a
// restore with trust pulls a signed image and refuses an unsigned one
// before its layer is fetched.
func TestSignatureRegistryRoundTrip(t *testing.T) {
	k := newKeys(t)
	plain, trusting := engines(t, k.trust)
	ctx := context.Background()
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	o := registry.Options{}
	path := restoreArchive(t, nil, nil)
	local, unsigned := "localhost/ckpt/web:1", "localhost/ckpt/unsigned:1"
	for _, ref := range []string{local, unsigned} {
		if _, err := plain.BuildCheckpointImage(path, ref, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := plain.SignImage(local, k.signer, provenance.Claims{Namespace: "shop"}); err != nil {
		t.Fatal(err)
	}
	dest, destUnsigned := host+"/team/ckpt:v1", host+"/team/unsigned:v1"
	index, err := plain.Push(ctx, local, dest, o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Push(ctx, unsigned, destUnsigned, o); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{local, unsigned} {
		if err := plain.RemoveImage(ctx, ref); err != nil {
			t.Fatal(err)
		}
	}
	if all, _ := plain.Images.List(); len(all) != 0 {
		t.Fatalf("left in the store: %v", all[0].Name)
	}

	i, err := plain.Pull(ctx, dest, o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Signature(dest); err != nil {
		t.Fatalf("the pull brought no signature: %v", err)
	}
	if err := trusting.verifyStored(i, &provenance.Expect{Namespace: "shop"}); err != nil {
		t.Fatal(err)
	}
	if err := plain.RemoveImage(ctx, dest); err != nil {
		t.Fatal(err)
	}

	src, err := trusting.checkpointImage(ctx, dest, o, &provenance.Expect{Namespace: "shop"}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(src.pulled) != 2 {
		t.Fatalf("pulled %v, want the image and its signature", src.pulled)
	}
	// A failed restore takes both away again.
	if err := src.rollback(); err != nil {
		t.Fatal(err)
	}
	if all, _ := plain.Images.List(); len(all) != 0 {
		t.Fatalf("after the rollback the store still holds %s", all[0].Name)
	}
	// By the index's digest (what a pod checkpoint reports), the
	// signature is still the manifest's; and once stored, it is found
	// beside the image under that name.
	byIndex := host + "/team/ckpt@" + index
	for range 2 {
		if _, err := trusting.checkpointImage(ctx, byIndex, o, &provenance.Expect{Namespace: "shop"}, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	_, err = trusting.checkpointImage(ctx, destUnsigned, o, nil, false, nil)
	if !errors.Is(err, provenance.ErrUnsigned) {
		t.Fatalf("an unsigned image with trust: %v", err)
	}
	if _, err := plain.Images.Get(destUnsigned); !errors.Is(err, image.ErrNotFound) {
		t.Fatalf("the refused image was stored: %v", err)
	}
}
