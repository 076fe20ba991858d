package image

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/stasis-dev/stasis/pkg/untar"
)

// Load reads an image from src, which may be an OCI layout directory, an
// oci-archive or docker-archive tarball, or a plain tar (optionally gzip'd)
// of a root filesystem. cleanup releases temporary files and must be called
// once the image has been stored.
func Load(src string) (img v1.Image, cleanup func(), err error) {
	cleanup = func() {}
	fi, err := os.Stat(src)
	if err != nil {
		return nil, cleanup, err
	}
	if fi.IsDir() {
		img, err := fromLayout(src)
		return img, cleanup, err
	}
	kind, err := sniffTar(src)
	if err != nil {
		return nil, cleanup, err
	}
	switch kind {
	case "oci-archive":
		tmp, err := os.MkdirTemp("", "stasis-oci-")
		if err != nil {
			return nil, cleanup, err
		}
		cleanup = func() { os.RemoveAll(tmp) }
		f, err := os.Open(src)
		if err != nil {
			return nil, cleanup, err
		}
		defer f.Close()
		if err := untar.Extract(context.Background(), f, tmp, untar.Options{Kind: untar.Members}); err != nil {
			return nil, cleanup, fmt.Errorf("read oci-archive: %w", err)
		}
		img, err := fromLayout(tmp)
		return img, cleanup, err
	case "docker-archive":
		img, err := tarball.ImageFromPath(src, nil)
		if err != nil {
			return nil, cleanup, fmt.Errorf("read docker-archive: %w", err)
		}
		return img, cleanup, nil
	}
	layer, err := tarball.LayerFromFile(src)
	if err != nil {
		return nil, cleanup, fmt.Errorf("read rootfs tar: %w", err)
	}
	img, err = mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, cleanup, err
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: "amd64", OS: "linux", Created: v1.Time{Time: time.Now().UTC()},
		Config: v1.Config{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
		RootFS: mustRootFS(layer),
	})
	return img, cleanup, err
}

func mustRootFS(l v1.Layer) v1.RootFS {
	d, _ := l.DiffID()
	return v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{d}}
}

func fromLayout(dir string) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("read OCI layout %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(im.Manifests) == 0 {
		return nil, fmt.Errorf("OCI layout %s holds no image", dir)
	}
	d := im.Manifests[0]
	if d.MediaType.IsIndex() {
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, err
		}
		cm, err := child.IndexManifest()
		if err != nil || len(cm.Manifests) == 0 {
			return nil, fmt.Errorf("OCI layout %s: empty nested index", dir)
		}
		return child.Image(cm.Manifests[0].Digest)
	}
	return idx.Image(d.Digest)
}

// sniffTar tells archive kinds apart by their top-level members.
func sniffTar(src string) (string, error) {
	f, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var head [2]byte
	if _, err := io.ReadFull(f, head[:]); err == nil && head == [2]byte{0x1f, 0x8b} {
		return "rootfs", nil // compressed: only plain rootfs tars are gzip'd here
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	tr := tar.NewReader(f)
	for i := 0; i < 64; i++ {
		h, err := tr.Next()
		if err != nil {
			break
		}
		switch filepath.Clean(h.Name) {
		case "oci-layout":
			return "oci-archive", nil
		case "manifest.json":
			return "docker-archive", nil
		}
	}
	return "rootfs", nil
}
