// Package podcheckpoint checkpoints the containers of a Kubernetes pod on
// its node. It drives the CRI runtime's runc directly (containerd's and
// CRI-O's containers are runc containers under a known --root), because
// that is the only way to make a multi-container pod consistent: all named
// containers are frozen first, each is dumped while frozen (CRIU leaves a
// frozen container frozen), their rootfs changes are read, and only then
// are they all thawed. The kubelet's checkpoint API cannot do this: the
// runtime behind it pauses and resumes each container around its own
// dump, and a container frozen at a parent cgroup cannot be seized.
//
// Each container's archive is written in the format every engine reads
// (pkg/archive) and stored as a checkpoint image in the node's stasis
// store, signed with the cluster's checkpoint key when there is one, and
// pushed to a registry when asked.
package podcheckpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/rootfs"
	"github.com/stasis-dev/stasis/pkg/runtime"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// Checkpointer does pod checkpoints on one node.
type Checkpointer struct {
	Engine *engine.Engine
	// Runtime is the CRI runtime's runc with its --root (containerd:
	// /run/containerd/runc/k8s.io; CRI-O: its runtime_root).
	Runtime *runtime.Runtime
	// Mountinfo is where the containers' rootfs mounts are listed: the
	// host's (/proc/1/mountinfo from a DaemonSet with hostPID).
	Mountinfo string
	// HostRoot is where the host's root is seen ("" or "/" on the host;
	// /host in the agent's DaemonSet): the paths runc and mountinfo give
	// are the host's.
	HostRoot string
	// Signer, when set, is the cluster's checkpoint key: each container's
	// checkpoint image is signed (see pkg/provenance) before it is
	// pushed, so the signature travels with it, naming Cluster, the pod,
	// the container and Node.
	Signer  signature.Signer
	Cluster string
	// Node is this node's name.
	Node string
}

// LocalImage is the name a container's checkpoint has in the node store.
func LocalImage(r wire.PodCheckpointRequest, container string) string {
	uid := r.UID
	if len(uid) > 8 {
		uid = uid[:8]
	}
	return fmt.Sprintf("localhost/stasis/%s/%s-%s:%s", r.Namespace, r.Name, uid, container)
}

// Checkpoint checkpoints the pod's containers.
func (c *Checkpointer) Checkpoint(ctx context.Context, r wire.PodCheckpointRequest) (*wire.PodCheckpointResult, error) {
	if r.Namespace == "" || r.Pod == "" || r.Name == "" || len(r.Containers) == 0 {
		return nil, errors.New("pod checkpoint: namespace, pod, name and containers are required")
	}
	for _, ctr := range r.Containers {
		if ctr.Name == "" || ctr.ID == "" || strings.ContainsAny(ctr.ID, "/.") {
			return nil, fmt.Errorf("pod checkpoint: container %q has no valid ID %q", ctr.Name, ctr.ID)
		}
	}
	res := &wire.PodCheckpointResult{}
	var todo []wire.PodContainer
	for _, ctr := range r.Containers {
		// A repeated request finds what the first one stored.
		if img, err := c.Engine.Images.Get(LocalImage(r, ctr.Name)); err == nil {
			res.Containers = append(res.Containers, c.describe(ctr.Name, img))
		} else {
			todo = append(todo, ctr)
		}
	}
	if len(todo) > 0 {
		done, err := c.dump(ctx, r, todo)
		if err != nil {
			return nil, fmt.Errorf("pod checkpoint %s/%s: %w", r.Namespace, r.Pod, err)
		}
		res.Containers = append(res.Containers, done...)
	}
	if c.Signer != nil {
		for _, cr := range res.Containers {
			if err := c.sign(r, cr.Name); err != nil {
				return nil, fmt.Errorf("pod checkpoint %s/%s: %w", r.Namespace, r.Pod, err)
			}
		}
	}
	if r.Repository != "" {
		for i := range res.Containers {
			cr := &res.Containers[i]
			dest := r.Repository + ":" + r.Name + "-" + cr.Name
			digest, err := c.Engine.Push(ctx, LocalImage(r, cr.Name), dest, registry.Options{TLSVerify: !r.Insecure})
			if err != nil {
				return nil, fmt.Errorf("pod checkpoint %s/%s: push %s: %w", r.Namespace, r.Pod, dest, err)
			}
			cr.Image = r.Repository + "@" + digest
		}
	}
	return res, nil
}

// sign signs a container's checkpoint image unless it has a signature
// already (a repeated request finds the first one's).
func (c *Checkpointer) sign(r wire.PodCheckpointRequest, container string) error {
	name := LocalImage(r, container)
	_, err := c.Engine.Signature(name)
	if err == nil || !errors.Is(err, image.ErrNotFound) {
		return err
	}
	return c.Engine.SignImage(name, c.Signer, provenance.Claims{
		Cluster: c.Cluster, Namespace: r.Namespace, Pod: r.Pod, Container: container, Node: c.Node, Time: time.Now(),
	})
}

func (c *Checkpointer) describe(name string, img *image.Image) wire.PodContainerResult {
	// A checkpoint image's one layer is the archive: its digest and size.
	cr := wire.PodContainerResult{Name: name, Image: img.Name, Size: img.Size}
	if p, err := c.Engine.Images.LayerPath(img); err == nil {
		cr.Digest = "sha256:" + filepath.Base(p)
	}
	return cr
}

// target is a container being checkpointed.
type target struct {
	wire.PodContainer
	state  *runtime.State
	spec   *specs.Spec
	layout rootfs.Layout
	dir    string // the archive's members
	took   time.Duration
}

// dump freezes the containers, dumps each with its rootfs changes, thaws
// them all whatever happened, and stores the archives as images.
func (c *Checkpointer) dump(ctx context.Context, r wire.PodCheckpointRequest, cs []wire.PodContainer) ([]wire.PodContainerResult, error) {
	work, done, err := c.Engine.WorkDir("pod-")
	if err != nil {
		return nil, err
	}
	defer done()
	criuVersion, err := criu.Version()
	if err != nil {
		return nil, err
	}
	var ts []*target
	for _, ctr := range cs {
		t, err := c.inspect(ctx, ctr, filepath.Join(work, ctr.ID))
		if err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	var frozen []string
	defer func() {
		for _, id := range frozen {
			c.Runtime.Resume(context.WithoutCancel(ctx), id)
		}
	}()
	for _, t := range ts {
		if err := c.Runtime.Pause(ctx, t.ID); err != nil {
			return nil, fmt.Errorf("freeze %s: %w", t.Name, err)
		}
		frozen = append(frozen, t.ID)
	}
	for _, t := range ts {
		start := time.Now()
		// Established TCP connections are dumped so that the dump works;
		// the restore closes them (the pod has a new address).
		err := c.Runtime.Checkpoint(ctx, t.ID, runtime.CheckpointOptions{
			ImagePath: filepath.Join(t.dir, archive.CheckpointDir), WorkPath: t.dir,
			LeaveRunning: true, TCPEstablished: true}, filepath.Join(t.dir, "runc.log"))
		if err != nil {
			log, _ := os.ReadFile(filepath.Join(t.dir, archive.DumpLog))
			return nil, fmt.Errorf("dump %s: %w; CRIU: %s", t.Name, err, strings.Join(criu.ErrorLines(log, 3), "; "))
		}
		if err := writeRootfsDiff(t); err != nil {
			return nil, fmt.Errorf("rootfs of %s: %w", t.Name, err)
		}
		t.took = time.Since(start)
	}
	for _, id := range frozen {
		if err := c.Runtime.Resume(ctx, id); err != nil {
			return nil, fmt.Errorf("thaw %s: %w", id, err)
		}
	}
	frozen = nil
	var out []wire.PodContainerResult
	for _, t := range ts {
		if err := writeMetadata(t, r, c.Runtime.Name(), criuVersion); err != nil {
			return nil, err
		}
		path := filepath.Join(work, t.ID+".tar.zst")
		if _, err := archive.WriteFile(path, archive.Contents{Dir: t.dir, Members: archive.Members}, archive.WriteOptions{Compression: archive.Zstd}); err != nil {
			return nil, fmt.Errorf("archive %s: %w", t.Name, err)
		}
		img, err := c.Engine.BuildCheckpointImage(path, LocalImage(r, t.Name), true, nil)
		if err != nil {
			return nil, err
		}
		cr := c.describe(t.Name, img)
		cr.DurationMillis = t.took.Milliseconds()
		out = append(out, cr)
	}
	return out, nil
}

// inspect finds a running container's bundle, spec and rootfs overlay.
func (c *Checkpointer) inspect(ctx context.Context, ctr wire.PodContainer, dir string) (*target, error) {
	st, err := c.Runtime.State(ctx, ctr.ID)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", ctr.Name, err)
	}
	if st.Status != runtime.Running {
		return nil, fmt.Errorf("container %s is %s, not running", ctr.Name, st.Status)
	}
	b, err := os.ReadFile(filepath.Join(c.HostRoot, st.Bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", ctr.Name, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("container %s: config.json: %w", ctr.Name, err)
	}
	root := spec.Root.Path
	if !filepath.IsAbs(root) {
		root = filepath.Join(st.Bundle, root)
	}
	lay, err := rootfs.OverlayAt(root, c.Mountinfo)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", ctr.Name, err)
	}
	if c.HostRoot != "" && c.HostRoot != "/" {
		lay.Upper = filepath.Join(c.HostRoot, lay.Upper)
		lowers := filepath.SplitList(lay.Lower)
		for i := range lowers {
			lowers[i] = filepath.Join(c.HostRoot, lowers[i])
		}
		lay.Lower = strings.Join(lowers, string(filepath.ListSeparator))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &target{PodContainer: ctr, state: st, spec: &spec, layout: lay, dir: dir}, nil
}

func writeRootfsDiff(t *target) error {
	f, err := os.Create(filepath.Join(t.dir, archive.RootfsDiff))
	if err != nil {
		return err
	}
	deleted, err := t.layout.Diff(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil || len(deleted) == 0 {
		return err
	}
	return archive.WriteJSON(t.dir, archive.DeletedFiles, deleted)
}

// Annotations the CRI runtimes put on a container's spec naming its image.
var imageAnnotations = []string{"io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName"}

// writeMetadata writes spec.dump and config.dump, as CRI-O and Podman
// name them, so that checkpointctl and every engine read the archive.
func writeMetadata(t *target, r wire.PodCheckpointRequest, runtimeName, criuVersion string) error {
	spec := t.spec
	if spec.Annotations == nil {
		spec.Annotations = map[string]string{}
	}
	spec.Annotations[metadata.CheckpointAnnotationCriuVersion] = criuVersion
	spec.Annotations[metadata.CheckpointAnnotationRuntimeName] = runtimeName
	spec.Annotations[metadata.CheckpointAnnotationEngineVersion] = archive.EngineVersion()
	if err := archive.WriteJSON(t.dir, archive.SpecDump, spec); err != nil {
		return err
	}
	img := ""
	for _, k := range imageAnnotations {
		if img = spec.Annotations[k]; img != "" {
			break
		}
	}
	cfg := archive.Config{
		ContainerConfig: metadata.ContainerConfig{
			ID: t.ID, Name: r.Pod + "_" + t.Name, RootfsImage: img, RootfsImageName: img,
			OCIRuntime: runtimeName, CheckpointedAt: time.Now().UTC(),
		},
		RawImageName: img, Command: spec.Process.Args, Spec: spec,
	}
	return archive.WriteJSON(t.dir, archive.ConfigDump, &cfg)
}
