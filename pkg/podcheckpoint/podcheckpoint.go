// Package podcheckpoint checkpoints the containers of a Kubernetes pod on
// its node, through the kubelet's checkpoint API, so it works the same
// whatever CRI runtime (containerd, CRI-O) runs the pod. All the pod's
// named containers are frozen before the first is dumped and thawed after
// the last, so a multi-container pod restores to one moment. Each
// container's archive becomes a checkpoint image in the node's stasis
// store, and is pushed to a registry when asked.
package podcheckpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/registry"
)

// Container is one of the pod's containers: its name in the pod and its
// ID in the CRI runtime (the pod status' containerID without the scheme).
type Container struct {
	Name string `json:"name"`
	ID   string `json:"id"`
}

// Request is a pod checkpoint.
type Request struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	// Name identifies the checkpoint (the Checkpoint object's name); with
	// UID it names the images, which makes a repeated request (a
	// controller that restarted) find the checkpoint already taken.
	Name       string      `json:"name"`
	UID        string      `json:"uid"`
	Containers []Container `json:"containers"`
	// Repository, when set, is where the images are pushed, tagged
	// <name>-<container>.
	Repository string `json:"repository,omitempty"`
	Insecure   bool   `json:"insecure,omitempty"`
}

// Result is a checkpoint per container.
type Result struct {
	Containers []ContainerResult `json:"containers"`
}

// ContainerResult is where one container's checkpoint is.
type ContainerResult struct {
	Name string `json:"name"`
	// Image is a name in the node's store, or repository@digest once
	// pushed.
	Image          string `json:"image"`
	Digest         string `json:"digest"`
	Size           int64  `json:"size"`
	DurationMillis int64  `json:"durationMillis"`
}

// Kubelet is the node's kubelet API.
type Kubelet struct {
	URL    string // e.g. https://127.0.0.1:10250
	Client *http.Client
}

// Checkpointer does pod checkpoints on one node.
type Checkpointer struct {
	Engine  *engine.Engine
	Kubelet Kubelet
	// Runc and RuncRoot reach the CRI runtime's containers to freeze them
	// (containerd: /run/containerd/runc/k8s.io; CRI-O: its runtime_root).
	Runc, RuncRoot string
}

// LocalImage is the name a container's checkpoint has in the node store.
func LocalImage(r Request, container string) string {
	uid := r.UID
	if len(uid) > 8 {
		uid = uid[:8]
	}
	return fmt.Sprintf("localhost/stasis/%s/%s-%s:%s", r.Namespace, r.Name, uid, container)
}

// Checkpoint checkpoints the pod's containers.
func (c *Checkpointer) Checkpoint(ctx context.Context, r Request) (*Result, error) {
	if r.Namespace == "" || r.Pod == "" || r.Name == "" || len(r.Containers) == 0 {
		return nil, errors.New("pod checkpoint: namespace, pod, name and containers are required")
	}
	for _, ctr := range r.Containers {
		if ctr.Name == "" || ctr.ID == "" || strings.ContainsAny(ctr.ID, "/.") {
			return nil, fmt.Errorf("pod checkpoint: container %q has no valid ID %q", ctr.Name, ctr.ID)
		}
	}
	res := &Result{}
	// A repeated request finds what the first one stored.
	var todo []Container
	for _, ctr := range r.Containers {
		if img, err := c.Engine.Images.Get(LocalImage(r, ctr.Name)); err == nil {
			res.Containers = append(res.Containers, c.describe(ctr.Name, img))
		} else {
			todo = append(todo, ctr)
		}
	}
	if len(todo) > 0 {
		archives, times, err := c.dumpFrozen(ctx, r, todo)
		if err != nil {
			return nil, err
		}
		for i, ctr := range todo {
			img, err := c.Engine.AdoptCheckpoint(archives[i], LocalImage(r, ctr.Name))
			if err != nil {
				return nil, fmt.Errorf("pod checkpoint %s/%s: container %s: %w", r.Namespace, r.Pod, ctr.Name, err)
			}
			cr := c.describe(ctr.Name, img)
			cr.DurationMillis = times[i].Milliseconds()
			res.Containers = append(res.Containers, cr)
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

func (c *Checkpointer) describe(name string, img *image.Image) ContainerResult {
	// A checkpoint image's one layer is the archive: its digest and size.
	cr := ContainerResult{Name: name, Image: img.Name, Size: img.Size}
	if p, err := c.Engine.Images.LayerPath(img); err == nil {
		cr.Digest = "sha256:" + filepath.Base(p)
	}
	return cr
}

// dumpFrozen freezes every container, has the kubelet dump each, and
// thaws them all, whatever happened. It returns the kubelet's archives.
func (c *Checkpointer) dumpFrozen(ctx context.Context, r Request, cs []Container) ([]string, []time.Duration, error) {
	var frozen []string
	defer func() {
		for _, id := range frozen {
			c.runc(context.WithoutCancel(ctx), "resume", id)
		}
	}()
	if len(cs) > 1 {
		// One container needs no freezing: CRIU freezes it. Several must
		// stop at one moment; CRIU dumps a frozen container and leaves it
		// frozen.
		for _, ctr := range cs {
			if err := c.runc(ctx, "pause", ctr.ID); err != nil {
				return nil, nil, fmt.Errorf("pod checkpoint %s/%s: freeze %s: %w", r.Namespace, r.Pod, ctr.Name, err)
			}
			frozen = append(frozen, ctr.ID)
		}
	}
	var archives []string
	var times []time.Duration
	for _, ctr := range cs {
		t := time.Now()
		a, err := c.kubeletCheckpoint(ctx, r.Namespace, r.Pod, ctr.Name)
		if err != nil {
			for _, p := range archives {
				os.Remove(p)
			}
			return nil, nil, fmt.Errorf("pod checkpoint %s/%s: container %s: %w", r.Namespace, r.Pod, ctr.Name, err)
		}
		archives = append(archives, a)
		times = append(times, time.Since(t))
	}
	return archives, times, nil
}

func (c *Checkpointer) runc(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, c.Runc, append([]string{"--root", c.RuncRoot}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("runc %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// kubeletCheckpoint calls POST /checkpoint/{ns}/{pod}/{container} and
// returns the archive path the kubelet wrote.
func (c *Checkpointer) kubeletCheckpoint(ctx context.Context, ns, pod, container string) (string, error) {
	u := fmt.Sprintf("%s/checkpoint/%s/%s/%s?timeout=600", strings.TrimRight(c.Kubelet.URL, "/"),
		url.PathEscape(ns), url.PathEscape(pod), url.PathEscape(container))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Kubelet.Client.Do(req)
	if err != nil {
		return "", fmt.Errorf("kubelet checkpoint: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("kubelet checkpoint: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var out struct {
		Items []string `json:"items"`
	}
	if err := json.Unmarshal(body, &out); err != nil || len(out.Items) != 1 {
		return "", fmt.Errorf("kubelet checkpoint: unexpected answer %q", body)
	}
	return out.Items[0], nil
}
