// Package podcheckpoint checkpoints the containers of a Kubernetes pod on
// its node. It finds them in the CRI runtime's runc (containerd's and
// CRI-O's containers are runc containers under a known --root) and hands
// them to engine.Dump as one dump, because that is the only way to make a
// multi-container pod consistent: all named containers are frozen first,
// each is dumped while frozen (CRIU leaves a frozen container frozen),
// their rootfs changes are read, and only then are they all thawed. The
// kubelet's checkpoint API cannot do this: the runtime behind it pauses
// and resumes each container around its own dump, and a container frozen
// at a parent cgroup cannot be seized.
//
// Each container's archive is stored as a checkpoint image in the node's
// stasis store (engine.ImageSink), signed with the cluster's checkpoint
// key when there is one, and pushed to a registry when asked.
package podcheckpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/rootfs"
	"github.com/stasis-dev/stasis/pkg/runc"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// Checkpointer does pod checkpoints on one node.
type Checkpointer struct {
	Engine *engine.Engine
	// Runtime is the CRI runtime's runc with its --root (containerd:
	// /run/containerd/runc/k8s.io; CRI-O: its runtime_root).
	Runtime *runc.Runtime
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

// ParseLocalImage reads the repository of a LocalImage name: the
// namespace, the Checkpoint's name and the first 8 characters of its UID.
func ParseLocalImage(repo string) (namespace, name, uid string, ok bool) {
	rest, ok := strings.CutPrefix(repo, "localhost/stasis/")
	if !ok {
		return "", "", "", false
	}
	namespace, rest, ok = strings.Cut(rest, "/")
	i := strings.LastIndex(rest, "-")
	if !ok || i < 1 || strings.Contains(rest, "/") {
		return "", "", "", false
	}
	return namespace, rest[:i], rest[i+1:], true
}

// Checkpoint checkpoints the pod's containers (engine.Dump, all frozen
// together), stores each as a checkpoint image, signs and pushes them.
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
	var jobs []engine.DumpJob
	var names []string
	for _, ctr := range r.Containers {
		to := c.sink(r, ctr.Name)
		// A repeated request finds what the first one stored, and
		// completes what it did not (signing, pushing).
		if img, err := c.Engine.Images.Get(to.Name); err == nil {
			cr, err := c.publish(ctx, r, ctr.Name, img, to)
			if err != nil {
				return nil, fmt.Errorf("pod checkpoint %s/%s: %w", r.Namespace, r.Pod, err)
			}
			res.Containers = append(res.Containers, cr)
			continue
		}
		s, err := c.subject(ctx, r, ctr)
		if err != nil {
			return nil, fmt.Errorf("pod checkpoint %s/%s: %w", r.Namespace, r.Pod, err)
		}
		jobs = append(jobs, engine.DumpJob{Subject: s, To: to})
		names = append(names, ctr.Name)
	}
	if len(jobs) == 0 {
		return res, nil
	}
	// Established TCP connections are dumped so that the dump works; the
	// restore closes them (the pod has a new address).
	done, err := c.Engine.Dump(ctx, engine.DumpOptions{LeaveRunning: true, KeepFrozen: r.KeepFrozen, TCPEstablished: true}, jobs...)
	if err != nil {
		return nil, fmt.Errorf("pod checkpoint %s/%s: %w", r.Namespace, r.Pod, err)
	}
	for i, d := range done {
		cr := wire.PodContainerResult{Name: names[i], Image: d.Image, Size: d.Size, Digest: d.Digest,
			DurationMillis: (d.Phases["dump"] + d.Phases["rootfs"]) / 1000}
		if d.Pushed != "" {
			cr.Image = r.Repository + "@" + d.Pushed
		}
		res.Containers = append(res.Containers, cr)
	}
	return res, nil
}

// Release ends (ReleaseKill) or thaws (ReleaseResume) the pod's containers
// that a KeepFrozen checkpoint left frozen. A container that is no longer
// paused is left as it is: a release asked twice does nothing more. One
// the runtime no longer knows is ended, as a kill asks; a resume fails.
// Killed, a frozen container's processes die as soon as it is thawed,
// which the kill does last.
func (c *Checkpointer) Release(ctx context.Context, r wire.PodReleaseRequest) error {
	if r.Action != wire.ReleaseKill && r.Action != wire.ReleaseResume {
		return fmt.Errorf("release %s/%s: action %q (want %s or %s)", r.Namespace, r.Pod, r.Action, wire.ReleaseKill, wire.ReleaseResume)
	}
	var errs []error
	for _, ctr := range r.Containers {
		if err := c.release(ctx, r.Namespace, r.Pod, ctr, r.Action); err != nil {
			errs = append(errs, fmt.Errorf("release %s/%s container %s: %w", r.Namespace, r.Pod, ctr.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (c *Checkpointer) release(ctx context.Context, namespace, name string, ctr wire.PodContainer, action string) error {
	if ctr.ID == "" || strings.ContainsAny(ctr.ID, "/.") {
		return fmt.Errorf("no valid ID %q", ctr.ID)
	}
	st, err := c.Runtime.State(ctx, ctr.ID)
	if errors.Is(err, runc.ErrNotExist) && action == wire.ReleaseKill {
		return nil // ended already, as asked
	}
	if err != nil {
		return err
	}
	if st.Status != runc.Paused {
		return nil
	}
	// The pod may be gone from the API server by now (a migration deletes
	// it before it ends its processes): the runtime's own record says
	// whose container this is.
	b, err := os.ReadFile(filepath.Join(c.HostRoot, st.Bundle, "config.json"))
	if err != nil {
		return err
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return fmt.Errorf("config.json: %w", err)
	}
	if ns, pod := podOf(spec.Annotations); ns != namespace || pod != name {
		return fmt.Errorf("container %s belongs to pod %s/%s", ctr.ID, ns, pod)
	}
	if action == wire.ReleaseKill {
		if err := c.Runtime.Kill(ctx, ctr.ID, "KILL"); err != nil {
			return err
		}
		// runc 1.2 thaws a container it SIGKILLs; older ones leave
		// that to us.
		if st, err := c.Runtime.State(ctx, ctr.ID); err != nil || st.Status != runc.Paused {
			return nil
		}
	}
	return c.Runtime.Resume(ctx, ctr.ID)
}

// sink is where a container's checkpoint goes: its name in the node's
// store, signed with the cluster's key, pushed to the request's repository.
func (c *Checkpointer) sink(r wire.PodCheckpointRequest, container string) engine.ImageSink {
	s := engine.ImageSink{Name: LocalImage(r, container), Local: true, Signer: c.Signer,
		Claims: provenance.Claims{Cluster: c.Cluster, Namespace: r.Namespace, Pod: r.Pod, Container: container, Node: c.Node}}
	if r.Repository != "" {
		s.Push, s.PushTo, s.Registry = true, r.Repository+":"+r.Name+"-"+container, registry.Options{TLSVerify: !r.Insecure}
	}
	return s
}

// publish completes a checkpoint image an earlier request stored.
func (c *Checkpointer) publish(ctx context.Context, r wire.PodCheckpointRequest, name string, img *image.Image, to engine.ImageSink) (wire.PodContainerResult, error) {
	// A checkpoint image's one layer is the archive: its digest and size.
	cr := wire.PodContainerResult{Name: name, Image: img.Name, Size: img.Size}
	if p, err := c.Engine.Images.LayerPath(img); err == nil {
		cr.Digest = "sha256:" + filepath.Base(p)
	}
	digest, err := c.Engine.Publish(ctx, img.Name, to)
	if err != nil {
		return cr, err
	}
	if digest != "" {
		cr.Image = r.Repository + "@" + digest
	}
	return cr, nil
}

// podOf is the namespace and name of the pod a container's spec says it
// belongs to, as containerd or CRI-O annotate it.
func podOf(a map[string]string) (namespace, name string) {
	if ns := a["io.kubernetes.cri.sandbox-namespace"]; ns != "" {
		return ns, a["io.kubernetes.cri.sandbox-name"]
	}
	return a["io.kubernetes.pod.namespace"], a["io.kubernetes.pod.name"]
}

// Annotations the CRI runtimes put on a container's spec naming its image.
var imageAnnotations = []string{"io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName"}

// subject finds a running container's bundle, spec and rootfs overlay,
// and says what its config.dump records: what CRI-O and Podman write, so
// that checkpointctl and every engine read the archive.
func (c *Checkpointer) subject(ctx context.Context, r wire.PodCheckpointRequest, ctr wire.PodContainer) (*engine.Subject, error) {
	st, err := c.Runtime.State(ctx, ctr.ID)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", ctr.Name, err)
	}
	if st.Status != runc.Running {
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
	img := ""
	for _, k := range imageAnnotations {
		if img = spec.Annotations[k]; img != "" {
			break
		}
	}
	return &engine.Subject{
		Runtime: c.Runtime, ID: ctr.ID, Name: ctr.Name, Spec: &spec, Layout: lay,
		// The agent checked the pod's opt-outs (its annotations are not
		// all in the spec); they hold here too, as far as the spec has them.
		Marks: spec.Annotations,
		Config: archive.Config{
			ContainerConfig: metadata.ContainerConfig{ID: ctr.ID, Name: r.Pod + "_" + ctr.Name, RootfsImage: img, RootfsImageName: img},
			RawImageName:    img,
		},
	}, nil
}
