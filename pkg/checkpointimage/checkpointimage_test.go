package checkpointimage

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"testing"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	"github.com/google/go-containerregistry/pkg/v1/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-dev/stasis/pkg/archive"
)

func writeArchive(t *testing.T, c archive.Compression) string {
	t.Helper()
	dir := t.TempDir()
	cfg := archive.Config{ContainerConfig: metadata.ContainerConfig{Name: "web", RootfsImageName: "reg.example/app:1", OCIRuntime: "runc"}}
	if err := archive.WriteJSON(dir, archive.ConfigDump, &cfg); err != nil {
		t.Fatal(err)
	}
	spec := specs.Spec{Annotations: map[string]string{metadata.CheckpointAnnotationEngine: "stasis", metadata.CheckpointAnnotationCriuVersion: "4.1.1"}}
	if err := archive.WriteJSON(dir, archive.SpecDump, &spec); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, archive.CheckpointDir), 0o700)
	os.WriteFile(filepath.Join(dir, archive.CheckpointDir, "pages-1.img"), make([]byte, 1<<20), 0o600)
	out := filepath.Join(t.TempDir(), "a.tar")
	if _, err := archive.WriteFile(out, archive.Contents{Dir: dir, Members: archive.Members}, archive.WriteOptions{Compression: c}); err != nil {
		t.Fatal(err)
	}
	return out
}

func sha256File(t *testing.T, p string) string {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

// The archive is the layer byte for byte, and the image reads back as a
// checkpoint of the right container and base image.
func TestBuildUsesTheArchiveAsItsLayer(t *testing.T) {
	for c, want := range map[archive.Compression]types.MediaType{archive.Zstd: types.OCILayerZStd, archive.Gzip: types.OCILayer} {
		path := writeArchive(t, c)
		cfg, spec, err := archive.ReadMetadata(path)
		if err != nil {
			t.Fatal(err)
		}
		img, err := Build(path, cfg, spec, "sha256:abc")
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Layers) != 1 || m.Layers[0].MediaType != want || m.Layers[0].Digest.Hex != sha256File(t, path) {
			t.Fatalf("%s: layer %+v is not the archive (sha256 %s)", c, m.Layers, sha256File(t, path))
		}
		info, ok := Read(m.Annotations)
		if !ok || info.Container != "web" || info.BaseImage != "reg.example/app:1" || info.Engine != "stasis" || info.BaseImageDigest != "sha256:abc" {
			t.Fatalf("%s: read back %+v (ok %v) from %v", c, info, ok, m.Annotations)
		}
		for _, k := range []string{CRIOName, PodmanName, metadata.CheckpointAnnotationName} {
			if m.Annotations[k] != "web" {
				t.Errorf("%s: annotation %s = %q", c, k, m.Annotations[k])
			}
		}
	}
}

func TestBuildRefusesWhatIsNotACheckpoint(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.tar")
	os.WriteFile(p, []byte("not a tar at all, just text"), 0o600)
	if _, _, err := archive.ReadMetadata(p); err == nil {
		t.Fatal("read checkpoint metadata from a text file")
	}
	if _, ok := Read(map[string]string{"org.opencontainers.image.title": "app"}); ok {
		t.Fatal("an ordinary image read as a checkpoint")
	}
}
