package checkpointimage

// FuzzRead: a checkpoint image's annotations come from a registry, so
// Read takes whatever a manifest (or an index and its descriptors) says.
// It must not panic, and it says "checkpoint" exactly when a name
// annotation of some engine is there, with that name.

import (
	"bytes"
	"path/filepath"
	"testing"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/stasis-dev/stasis/pkg/archive"
)

func FuzzRead(f *testing.F) {
	dir := f.TempDir()
	cfg := archive.Config{ContainerConfig: metadata.ContainerConfig{Name: "web", RootfsImageName: "reg.example/app:1"}}
	if err := archive.WriteJSON(dir, archive.ConfigDump, &cfg); err != nil {
		f.Fatal(err)
	}
	if err := archive.WriteJSON(dir, archive.SpecDump, map[string]any{"annotations": map[string]string{metadata.CheckpointAnnotationEngine: "stasis"}}); err != nil {
		f.Fatal(err)
	}
	path := filepath.Join(f.TempDir(), "a.tar.zst")
	if _, err := archive.WriteFile(path, archive.Contents{Dir: dir, Members: []string{archive.ConfigDump, archive.SpecDump}}, archive.WriteOptions{Compression: archive.Zstd}); err != nil {
		f.Fatal(err)
	}
	_, spec, err := archive.ReadMetadata(path)
	if err != nil {
		f.Fatal(err)
	}
	img, err := Build(path, &cfg, spec, "sha256:abc")
	if err != nil {
		f.Fatal(err)
	}
	idx, err := Index(img)
	if err != nil {
		f.Fatal(err)
	}
	m, _ := img.RawManifest()
	im, _ := idx.RawManifest()
	f.Add(m)
	f.Add(im)
	for _, s := range []string{
		`{"schemaVersion":2,"annotations":{"io.podman.annotations.checkpoint.name":"web","io.podman.annotations.checkpoint.rootfsImageName":"app"}}`,
		`{"schemaVersion":2,"annotations":{"io.kubernetes.cri-o.annotations.checkpoint.name":"web","org.opencontainers.image.created":"not a time"}}`,
		`{"schemaVersion":2,"annotations":{"org.criu.checkpoint.container.name":"","io.podman.annotations.checkpoint.name":""}}`,
		`{"schemaVersion":2,"annotations":{"org.opencontainers.image.title":"app"}}`,
		`{"schemaVersion":2,"annotations":null}`,
		`{"schemaVersion":2}`,
		`{"manifests":[{"annotations":{"org.criu.checkpoint.container.name":"web"}}]}`,
		`[]`,
		"\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := v1.ParseManifest(bytes.NewReader(b)); err == nil {
			checkRead(t, m.Annotations)
			checkRead(t, m.Config.Annotations)
			for _, l := range m.Layers {
				checkRead(t, l.Annotations)
			}
		}
		if idx, err := v1.ParseIndexManifest(bytes.NewReader(b)); err == nil {
			checkRead(t, idx.Annotations)
			for _, d := range idx.Manifests {
				checkRead(t, d.Annotations)
			}
		}
	})
}

func checkRead(t *testing.T, a map[string]string) {
	info, ok := Read(a)
	name := ""
	for _, k := range []string{metadata.CheckpointAnnotationName, PodmanName, CRIOName} {
		if a[k] != "" {
			name = a[k]
			break
		}
	}
	switch {
	case ok != (name != ""):
		t.Errorf("Read says checkpoint=%v of %v", ok, a)
	case ok && (info == nil || info.Container != name):
		t.Errorf("Read gives %+v for container %q", info, name)
	case !ok && info != nil:
		t.Errorf("Read gives %+v for no checkpoint", info)
	}
}
