// Package checkpointimage is the checkpoint as an OCI image: one layer that
// is the checkpoint archive itself (its files unpacked at the layer's root,
// as CRI-O and Podman mount it), and the annotations by which CRI-O, Podman
// and containerd/checkpointctl each recognise a checkpoint. Every family is
// written, so one image restores on all of them.
package checkpointimage

import (
	"bytes"
	"fmt"
	"io"
	"os"
	goruntime "runtime"
	"strings"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/pkg/archive"
)

// Annotations by which the engines recognise a checkpoint image.
const (
	// CRIOName is what CRI-O looks for on an image given to a container
	// create as its rootfs: with it, the create becomes a restore.
	CRIOName = "io.kubernetes.cri-o.annotations.checkpoint.name"
	// PodmanName is what `podman container restore IMAGE` requires.
	PodmanName   = "io.podman.annotations.checkpoint.name"
	podmanPrefix = "io.podman.annotations.checkpoint."
	// BaseImageDigest is the manifest digest of the base image, so a
	// restore elsewhere can pull exactly that image.
	BaseImageDigest = "io.stasis.checkpoint.rootfsImageDigest"
	// IndexDigest is the sha256 of the layer's frame index
	// (archive.Index): the manifest vouches for it as for the layer, so a
	// lazy restore reads the layer's pages frame by frame, each checked.
	IndexDigest = "io.stasis.checkpoint.indexDigest"
)

// Info is what a checkpoint image says about itself.
type Info struct {
	Container       string
	BaseImage       string
	BaseImageID     string
	BaseImageDigest string
	IndexDigest     string
	Engine          string
	Created         time.Time
}

// Read reads the annotations of an image; ok is false when the image is
// not a checkpoint.
func Read(a map[string]string) (info *Info, ok bool) {
	name := first(a, metadata.CheckpointAnnotationName, PodmanName, CRIOName)
	if name == "" {
		return nil, false
	}
	info = &Info{
		Container:       name,
		BaseImage:       first(a, metadata.CheckpointAnnotationRootfsImageName, podmanPrefix+"rootfsImageName", metadata.CheckpointAnnotationRawImageName),
		BaseImageID:     first(a, metadata.CheckpointAnnotationRootfsImageID, podmanPrefix+"rootfsImageID"),
		BaseImageDigest: a[BaseImageDigest],
		IndexDigest:     a[IndexDigest],
		Engine:          first(a, metadata.CheckpointAnnotationEngine),
	}
	if info.Engine == "" && a[PodmanName] != "" {
		info.Engine = "podman"
	}
	info.Created, _ = time.Parse(time.RFC3339, a["org.opencontainers.image.created"])
	return info, true
}

func first(a map[string]string, keys ...string) string {
	for _, k := range keys {
		if v := a[k]; v != "" {
			return v
		}
	}
	return ""
}

// Build makes the checkpoint image of an archive file (stasis', Podman's,
// CRI-O's or the kubelet's; zstd, gzip or plain), whose config.dump and
// spec.dump (archive.ReadMetadata) are cfg and spec. The archive is the
// layer byte for byte: nothing is recompressed. baseDigest, when known, is
// the base image's manifest digest.
func Build(archivePath string, cfg *archive.Config, spec *specs.Spec, baseDigest string) (v1.Image, error) {
	mt, err := layerMediaType(archivePath)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return os.Open(archivePath) },
		tarball.WithMediaType(mt))
	if err != nil {
		return nil, fmt.Errorf("checkpoint image of %s: %w", archivePath, err)
	}
	diffID, err := layer.DiffID()
	if err != nil {
		return nil, err
	}
	created := cfg.CheckpointedAt
	if created.IsZero() {
		created = time.Now().UTC()
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, MediaType: mt})
	if err != nil {
		return nil, err
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: goruntime.GOARCH, OS: "linux", Created: v1.Time{Time: created},
		RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{diffID}},
	})
	if err != nil {
		return nil, err
	}
	ann := Annotations(cfg, spec.Annotations, ThisHost())
	ann["org.opencontainers.image.created"] = created.Format(time.RFC3339)
	if d, err := archive.IndexDigestOf(archivePath); err == nil {
		ann[IndexDigest] = d
	}
	if baseDigest != "" {
		ann[BaseImageDigest] = baseDigest
		ann[metadata.CheckpointAnnotationRootfsImageSha] = baseDigest
	}
	return mutate.Annotations(img, ann).(v1.Image), nil
}

// Index wraps a checkpoint image in an OCI index that carries the same
// annotations, on the index and on the manifest's descriptor: containerd
// and checkpointctl look for them there, Podman and CRI-O on the manifest.
func Index(img v1.Image) (v1.ImageIndex, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
		Add: img,
		Descriptor: v1.Descriptor{
			MediaType:   types.OCIManifestSchema1,
			Platform:    &v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture},
			Annotations: m.Annotations,
		},
	})
	return mutate.Annotations(idx, m.Annotations).(v1.ImageIndex), nil
}

// layerMediaType names the archive's compression as a layer media type.
func layerMediaType(path string) (types.MediaType, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 4)
	if _, err := io.ReadFull(f, head); err != nil {
		return "", fmt.Errorf("%s is not a checkpoint archive: %w", path, err)
	}
	switch {
	case bytes.Equal(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return types.OCILayerZStd, nil
	case head[0] == 0x1f && head[1] == 0x8b:
		return types.OCILayer, nil
	}
	// A plain tar is gzip'd by the layer on the way into the store.
	return types.OCILayer, nil
}

// Host are the facts about the checkpointing host that engines check
// before they restore.
type Host struct {
	Arch, Kernel, CgroupVersion, DistName, DistVersion string
}

// ThisHost describes the machine stasis runs on.
func ThisHost() Host {
	h := Host{Arch: goruntime.GOARCH, CgroupVersion: "v1"}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		h.CgroupVersion = "v2"
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(l, "=")
			v = strings.Trim(v, `"`)
			switch k {
			case "ID":
				h.DistName = v
			case "VERSION_ID":
				h.DistVersion = v
			}
		}
	}
	return h
}

// engineOf tells the engine that wrote a checkpoint from the annotations
// each leaves in its spec.dump.
func engineOf(specAnn map[string]string) string {
	if specAnn["io.container.manager"] == "libpod" {
		return "podman"
	}
	for k := range specAnn {
		if strings.HasPrefix(k, "io.kubernetes.cri-o.") {
			return "cri-o"
		}
	}
	return ""
}

// Annotations are every family's annotations for a checkpoint, from its
// config.dump, the annotations of its spec.dump and the host.
func Annotations(cfg *archive.Config, specAnn map[string]string, h Host) map[string]string {
	engine := specAnn[metadata.CheckpointAnnotationEngine]
	if engine == "" {
		engine = engineOf(specAnn)
	}
	criuVersion := specAnn[metadata.CheckpointAnnotationCriuVersion]
	runtimeName := first(specAnn, metadata.CheckpointAnnotationRuntimeName)
	if runtimeName == "" {
		runtimeName = cfg.OCIRuntime
	}
	a := map[string]string{
		CRIOName: cfg.Name,

		PodmanName:                            cfg.Name,
		podmanPrefix + "rawImageName":         cfg.ImageName(),
		podmanPrefix + "rootfsImageID":        cfg.ImageID(),
		podmanPrefix + "rootfsImageName":      cfg.ImageName(),
		podmanPrefix + "criu.version":         criuVersion,
		podmanPrefix + "runtime.name":         runtimeName,
		podmanPrefix + "host.arch":            h.Arch,
		podmanPrefix + "host.kernel":          h.Kernel,
		podmanPrefix + "cgroups.version":      h.CgroupVersion,
		podmanPrefix + "distribution.name":    h.DistName,
		podmanPrefix + "distribution.version": h.DistVersion,

		metadata.CheckpointAnnotationEngine:              engine,
		metadata.CheckpointAnnotationEngineVersion:       specAnn[metadata.CheckpointAnnotationEngineVersion],
		metadata.CheckpointAnnotationName:                cfg.Name,
		metadata.CheckpointAnnotationRootfsImageName:     cfg.ImageName(),
		metadata.CheckpointAnnotationRootfsImageID:       cfg.ImageID(),
		metadata.CheckpointAnnotationRawImageName:        cfg.ImageName(),
		metadata.CheckpointAnnotationRuntimeName:         runtimeName,
		metadata.CheckpointAnnotationCriuVersion:         criuVersion,
		metadata.CheckpointAnnotationHostArch:            h.Arch,
		metadata.CheckpointAnnotationHostKernel:          h.Kernel,
		metadata.CheckpointAnnotationCgroupVersion:       h.CgroupVersion,
		metadata.CheckpointAnnotationDistributionName:    h.DistName,
		metadata.CheckpointAnnotationDistributionVersion: h.DistVersion,
	}
	for k, v := range map[string]string{
		metadata.CheckpointAnnotationPod:       specAnn["io.kubernetes.pod.name"],
		metadata.CheckpointAnnotationNamespace: specAnn["io.kubernetes.pod.namespace"],
		metadata.CheckpointAnnotationPodUID:    specAnn["io.kubernetes.pod.uid"],
	} {
		if v != "" {
			a[k] = v
		}
	}
	for k, v := range a {
		if v == "" {
			delete(a, k)
		}
	}
	return a
}
